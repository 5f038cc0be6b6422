;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

;;; Commentary:
;;;
;;; The demonstration behind 'make demo': Guix bug #31785 replayed on
;;; goalkeeper.  Run it against the build tree with
;;;
;;;   ./pre-inst-env guile --no-auto-compile demo/31785.scm [OPTION...]
;;;
;;; Three client processes, forked from this one, each drive their own
;;; worker (the scheduler of one client request, as in guix-daemon) through
;;; (goalkeeper) with max-jobs 1.  They build overlapping package graphs in
;;; one fresh temporary store; the builders are real /bin/sh processes
;;; whose work is a short 'sleep'.  B starts once A is building and C once
;;; B is busy, as in the report.
;;;
;;; The store has a database, as a real one does: var/guix/db/db.sqlite
;;; beside it, with Guix's schema, created here and written as guix-daemon
;;; writes it, through SQLite's C API (Guile's FFI on the libsqlite3 that
;;; libgoalkeeper links).  A builder writes its output in place, so the
;;; path exists, half-built, long before it is valid; once the builder
;;; exited 0, its client registers the output in ValidPaths in one
;;; transaction, as the daemon does, and only then reports the goal, which
;;; releases its lock.  The workers' validity is that database
;;; (#:store-database), so a goal waiting for another client's lock, which
;;; re-checks validity every 0.2 s, sees the half-built output on disk but
;;; not registered and keeps waiting: its worker's log record
;;; 'on-disk-not-valid says so.  The first build (glibc) waits for that:
;;; its builder, half-built, reads a fifo that this process writes once a
;;; client reported the record, so that the case shows in every run,
;;; without a timer.  At the end the demo checks that every output was
;;; registered once and that no goal found an output valid before its
;;; registration.  --exists-validity shows why: with "the path exists" as
;;; validity, a waiter takes glibc while it is being written.
;;;
;;; Each client runs its worker with 'run-worker', which waits in one
;;; 'select' on the worker's descriptor, its builders' pidfds and, through
;;; its #:watch hook, the builders' output pipes and the pipe from this
;;; process.  Its other hooks tell this process what happens, with a
;;; timestamp: the worker's log records (#:on-log) say who waits for whose
;;; lock, with the holder's pid, which the library asks the kernel for, and
;;; how long a goal waited; #:on-exit sees a builder exit before its goal
;;; is reported and its lock released.  This process prints the story in
;;; timestamp order: waits, lock hand-offs and their latency, "already
;;; valid" outcomes, and a final table that ends with the number of locks
;;; held by finished goals, as the workers' audits counted them after every
;;; goal that started, waited or finished.
;;;
;;; With --legacy-hold the workers keep a finished goal's locks, as the C++
;;; daemon did; the ledger catches that on the very call that finished the
;;; goal, and the demo says so loudly and exits with status 1.  Every wait
;;; is bounded (--timeout); the demo never hangs.
;;;
;;; Exit status: 0 success, 1 invariant violation (expected with
;;; --legacy-hold), 2 any other failure (timeout, builder failure, a check
;;; that did not hold, as expected with --exists-validity).
;;;
;;; Code:

(use-modules (goalkeeper)
             ((goalkeeper abi) #:select (define-c-struct))
             (ice-9 binary-ports)
             (ice-9 exceptions)
             (ice-9 format)
             (ice-9 ftw)
             (ice-9 match)
             (ice-9 rdelim)
             (rnrs bytevectors)
             (srfi srfi-1)
             (srfi srfi-9)
             (srfi srfi-26)
             (system foreign)
             (system foreign-library))


;;;
;;; Options.
;;;

(define (usage port)
  (format port "Usage: demo/31785.scm [OPTION...]
Replay Guix bug #31785 (three clients, overlapping builds, max-jobs 1) on
goalkeeper, in a fresh temporary store.

  --legacy-hold    finished goals keep their locks, as in the C++ daemon;
                   the invariant check catches it and the demo exits 1
  --exists-validity  the workers take \"the path exists\" as validity, the
                   library's default without a store database: a waiter
                   takes an output still being written as valid; the
                   checks catch it and the demo exits 2
  --timeout=SECS   give up (and exit 2) after SECS seconds (default 60)
  --keep           keep the temporary store and print where it is
  --verbose        also print the workers' raw diagnostics
  --help           show this help~%"))

(define %options
  (let loop ((args (cdr (command-line)))
             (options '((timeout . 60))))
    (match args
      (() options)
      (("--legacy-hold" . rest) (loop rest (acons 'legacy-hold? #t options)))
      (("--exists-validity" . rest)
       (loop rest (acons 'exists-validity? #t options)))
      (("--keep" . rest) (loop rest (acons 'keep? #t options)))
      (("--verbose" . rest) (loop rest (acons 'verbose? #t options)))
      (("--help" . _) (usage (current-output-port)) (exit 0))
      (((? (cut string-prefix? "--timeout=" <>) arg) . rest)
       (match (string->number (string-drop arg 10))
         ((? (lambda (n) (and (real? n) (positive? n))) n)
          (loop rest (acons 'timeout n options)))
         (_ (usage (current-error-port)) (exit 2))))
      ((arg . _)
       (format (current-error-port) "31785.scm: unknown argument ~s~%" arg)
       (usage (current-error-port))
       (exit 2)))))

(define (option key) (assq-ref %options key))
(define %legacy-hold? (option 'legacy-hold?))
(define %exists-validity? (option 'exists-validity?))


;;;
;;; The scenario.
;;;

(define %packages
  ;; NAME, the seconds its builder works, its inputs.  Listed in
  ;; dependency order.
  '(("glibc-2.39"    0.40 ())
    ("gcc-14.2.0"    0.50 ("glibc-2.39"))
    ("bash-5.2.37"   0.30 ("glibc-2.39"))
    ("coreutils-9.5" 0.30 ("gcc-14.2.0"))
    ("pcre2-10.42"   0.20 ("gcc-14.2.0"))
    ("hello-2.12.1"  0.10 ("gcc-14.2.0" "coreutils-9.5"))
    ("grep-3.11"     0.10 ("pcre2-10.42" "bash-5.2.37"))
    ("sed-4.9"       0.10 ("coreutils-9.5" "bash-5.2.37"))))

(define %client-specs
  ;; LABEL and the package it asks for ('guix build PACKAGE').
  '(("A" . "hello-2.12.1")
    ("B" . "grep-3.11")
    ("C" . "sed-4.9")))

(define (package-work name) (second (assoc name %packages)))
(define (package-inputs name) (third (assoc name %packages)))

(define (closure name)
  "NAME and everything it needs, in the order of %PACKAGES."
  (let ((needed (let loop ((todo (list name)) (seen '()))
                  (match todo
                    (() seen)
                    ((n . rest)
                     (if (member n seen)
                         (loop rest seen)
                         (loop (append (package-inputs n) rest)
                               (cons n seen))))))))
    (filter (cut member <> needed) (map first %packages))))

(define (short name)
  "NAME without its version: glibc-2.39 -> glibc, pcre2-10.42 -> pcre2."
  (let loop ((i (string-length name)))
    (match (string-rindex name #\- 0 i)
      (#f name)
      (j (if (and (< (+ j 1) (string-length name))
                  (char-numeric? (string-ref name (+ j 1))))
             (substring name 0 j)
             (loop j))))))


;;;
;;; Time: microseconds since the demo started, on CLOCK_MONOTONIC, which
;;; every process of the machine shares (hand-off latencies compare two
;;; processes' readings) and on which the library stamps its log records.
;;;

(define-c-struct %timespec "struct timespec"    ;Linux on 64-bit hosts
  read-timespec
  (seconds     int64)
  (nanoseconds int64))

(define %clock-gettime
  (foreign-library-function #f "clock_gettime"
                            #:return-type int
                            #:arg-types (list int '*)))

(define %clock-monotonic 1)                      ;from <time.h>

(define (now-us)
  (let ((ts (make-bytevector 16 0)))
    (%clock-gettime %clock-monotonic (bytevector->pointer ts))
    (read-timespec ts 0
                   (lambda (seconds nanoseconds)
                     (+ (* seconds 1000000) (quotient nanoseconds 1000))))))

(define (record-us record)
  "The time of RECORD, a worker's log record, in microseconds since the
demo started."
  (- (quotient (log-record-time record) 1000) %t0))

(define %t0
  ;; Reset when the clients are forked; they inherit it.
  (now-us))
(define (elapsed-us) (- (now-us) %t0))

(define (seconds us) (/ us 1e6))

(define (format-latency us)
  (if (< us 1000)
      (format #f "~,2f ms" (/ us 1000.))
      (format #f "~,1f ms" (/ us 1000.))))


;;;
;;; The temporary store.
;;;

;; Set by 'main': the temporary directory, the store in it, the store's
;; database (as /var/guix/db/db.sqlite is to /gnu/store), the log the
;; builders append to, and the gate of the first build.
(define %base #f)
(define %store #f)
(define %db-file #f)
(define %builds-log #f)
(define %gate-file #f)

(define %gated
  ;; The build whose builder stays half-built, its output on disk but not
  ;; registered, until a waiting client's re-check has seen it: A builds it
  ;; first, and B and C, started while A builds it, wait for its lock.
  ;; Everything else takes its time ('sleep') without waiting for anyone.
  "glibc-2.39")

(define %recheck-interval
  ;; How often, in seconds, a goal waiting for another client's lock asks
  ;; the database whether its output became valid (the library's default
  ;; is 1 s).
  0.2)

(define (fake-hash name)
  "A stable 32-character nix-base32 string for NAME, so that store file
names look like store file names."
  (define alphabet "0123456789abcdfghijklmnpqrsvwxyz")
  (define mask (- (expt 2 64) 1))
  (let loop ((i 0)
             (h (fold (lambda (c h)
                        (logand mask (* (logxor h (char->integer c))
                                        1099511628211)))
                      14695981039346656037
                      (string->list name)))
             (acc '()))
    (if (= i 32)
        (list->string acc)
        (let ((h* (logand mask (+ (* h 6364136223846793005)
                                  1442695040888963407))))
          (loop (+ i 1) h*
                (cons (string-ref alphabet (ash h* -59)) acc))))))

(define (store-path name)
  (string-append %store "/" (fake-hash name) "-" name))

(define %path->name
  (delay (let ((table (make-hash-table)))
           (for-each (lambda (name) (hash-set! table (store-path name) name))
                     (map first %packages))
           table)))

(define (path->name path)
  (or (hash-ref (force %path->name) path) (basename path)))

(define (disk-usage path)
  "The bytes of the regular files under PATH: the demo's stand-in for the
size of its NAR serialisation, which the daemon registers."
  (file-system-fold (const #t)
                    (lambda (file stat total) (+ total (stat:size stat)))
                    (lambda (dir stat total) total)
                    (lambda (dir stat total) total)
                    (lambda (file stat total) total)
                    (lambda (file stat errno total) total)
                    0 path lstat))

(define (delete-file-recursively dir)
  (file-system-fold (const #t)
                    (lambda (file stat result)
                      (false-if-exception (delete-file file)) result)
                    (lambda (dir stat result) result)
                    (lambda (dir stat result)
                      (false-if-exception (rmdir dir)) result)
                    (lambda (file stat result) result)
                    (lambda (file stat errno result) result)
                    #t dir lstat))


;;;
;;; The store's database: Guix's db.sqlite, written as guix-daemon writes
;;; it, through SQLite's C API.  The library is the libsqlite3.so.0 that
;;; libgoalkeeper links (see src/store_db.rs, "One SQLite per process"), so
;;; in a client the writer below and the worker's read-only connection share
;;; one SQLite, as they would inside guix-daemon; the demo needs no package
;;; beyond those libgoalkeeper needs.
;;;

(define %libsqlite (delay (load-foreign-library "libsqlite3.so.0")))

(define-syntax-rule (define-sqlite-function name c-name return (arg ...))
  (define name
    (let ((proc (delay (foreign-library-function (force %libsqlite) c-name
                                                 #:return-type return
                                                 #:arg-types (list arg ...)))))
      (lambda args (apply (force proc) args)))))

(define-sqlite-function %sqlite3-open-v2 "sqlite3_open_v2" int ('* '* int '*))
(define-sqlite-function %sqlite3-close-v2 "sqlite3_close_v2" int ('*))
(define-sqlite-function %sqlite3-errmsg "sqlite3_errmsg" '* ('*))
(define-sqlite-function %sqlite3-busy-timeout "sqlite3_busy_timeout" int ('* int))
(define-sqlite-function %sqlite3-exec "sqlite3_exec" int ('* '* '* '* '*))
(define-sqlite-function %sqlite3-prepare-v2 "sqlite3_prepare_v2" int
  ('* '* int '* '*))
(define-sqlite-function %sqlite3-bind-text "sqlite3_bind_text" int
  ('* int '* int '*))
(define-sqlite-function %sqlite3-bind-int64 "sqlite3_bind_int64" int
  ('* int int64))
(define-sqlite-function %sqlite3-step "sqlite3_step" int ('*))
(define-sqlite-function %sqlite3-column-int64 "sqlite3_column_int64" int64
  ('* int))
(define-sqlite-function %sqlite3-finalize "sqlite3_finalize" int ('*))

;; From <sqlite3.h>.
(define SQLITE_OK 0)
(define SQLITE_ROW 100)
(define SQLITE_DONE 101)
(define SQLITE_OPEN_READWRITE #x02)
(define SQLITE_OPEN_CREATE #x04)
(define SQLITE_TRANSIENT (make-pointer (- (expt 2 64) 1)))  ;(void *) -1

(define %guix-schema
  ;; The tables of Guix's nix/libstore/schema.sql, schema version 7 (what
  ;; guix-daemon creates in a new store).  A path is valid when it has a
  ;; row in ValidPaths.
  "create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
create table if not exists FailedPaths (
    path text primary key not null,
    time integer not null
);")

(define (sqlite-error db file what)
  (raise-exception
   (make-exception-with-message
    (format #f "~a: ~a: ~a" file what
            (if (null-pointer? db)
                "out of memory"
                (pointer->string (%sqlite3-errmsg db)))))))

(define* (sqlite-open file #:key create?)
  "Open the database FILE for reading and writing, as guix-daemon does:
foreign keys on, synchronous = normal, a busy timeout (the daemon's is an
hour; here the demo's deadline bounds everything)."
  (let* ((out    (make-bytevector (sizeof '*) 0))
         (status (%sqlite3-open-v2 (string->pointer file "UTF-8")
                                   (bytevector->pointer out)
                                   (logior SQLITE_OPEN_READWRITE
                                           (if create? SQLITE_OPEN_CREATE 0))
                                   %null-pointer))
         (db     (dereference-pointer (bytevector->pointer out))))
    (unless (= status SQLITE_OK)
      (let ((e (make-exception-with-message
                (format #f "~a: cannot open the store database: ~a" file
                        (if (null-pointer? db)
                            "out of memory"
                            (pointer->string (%sqlite3-errmsg db)))))))
        (%sqlite3-close-v2 db)
        (raise-exception e)))
    (%sqlite3-busy-timeout db 60000)
    (sqlite-exec db file "pragma foreign_keys = 1; pragma synchronous = normal;")
    db))

(define (sqlite-close db)
  (%sqlite3-close-v2 db))

(define (sqlite-exec db file sql)
  (unless (= SQLITE_OK (%sqlite3-exec db (string->pointer sql "UTF-8")
                                      %null-pointer %null-pointer
                                      %null-pointer))
    (sqlite-error db file sql)))

(define (sqlite-run db file sql . parameters)
  "Run the statement SQL with PARAMETERS (strings, integers, #f for NULL)
bound to ?1, ?2, ...; return the first column of each row, as integers."
  (let* ((out    (make-bytevector (sizeof '*) 0))
         (status (%sqlite3-prepare-v2 db (string->pointer sql "UTF-8") -1
                                      (bytevector->pointer out) %null-pointer))
         (stmt   (dereference-pointer (bytevector->pointer out))))
    (unless (= status SQLITE_OK)
      (sqlite-error db file sql))
    (dynamic-wind
      (const #t)
      (lambda ()
        (let loop ((i 1) (parameters parameters))
          (match parameters
            (() #t)
            ((p . rest)
             (unless (= SQLITE_OK
                        (cond ((string? p)
                               (%sqlite3-bind-text stmt i
                                                   (string->pointer p "UTF-8")
                                                   -1 SQLITE_TRANSIENT))
                              ((integer? p) (%sqlite3-bind-int64 stmt i p))
                              (else SQLITE_OK)))        ;#f: NULL
               (sqlite-error db file sql))
             (loop (+ i 1) rest))))
        (let loop ((rows '()))
          (let ((status (%sqlite3-step stmt)))
            (cond ((= status SQLITE_ROW)
                   (loop (cons (%sqlite3-column-int64 stmt 0) rows)))
                  ((= status SQLITE_DONE) (reverse rows))
                  (else (sqlite-error db file sql))))))
      (lambda () (%sqlite3-finalize stmt)))))

(define (create-store-database! file)
  "Create FILE, an empty store database with Guix's schema in WAL mode,
and the 'schema' file beside it, as guix-daemon does for a new store."
  (let ((db (sqlite-open file #:create? #t)))
    (dynamic-wind
      (const #t)
      (lambda ()
        (sqlite-exec db file "pragma main.journal_mode = wal;")
        (sqlite-exec db file %guix-schema))
      (lambda () (sqlite-close db)))
    (call-with-output-file (string-append (dirname file) "/schema")
      (cut display "7" <>))))

(define (register-valid-path! db file path hash nar-size references
                              before-commit)
  "Register PATH, a store path just built, in the store database DB (open
on FILE) as guix-daemon does when a build succeeded: in one transaction,
its row in ValidPaths (HASH, the time, NAR-SIZE) and its references
(REFERENCES, store paths that are valid already) in Refs.  BEFORE-COMMIT is
called between the inserts and the commit: until it returns, no other
connection can see PATH as valid."
  (sqlite-exec db file "begin;")
  (catch #t
    (lambda ()
      (sqlite-run db file "insert into ValidPaths (path, hash, registrationTime, \
deriver, narSize) values (?1, ?2, ?3, ?4, ?5);"
                  path hash (current-time) #f nar-size)
      (for-each (lambda (reference)
                  (sqlite-run db file "insert or replace into Refs (referrer, \
reference) select r.id, d.id from ValidPaths r, ValidPaths d \
where r.path = ?1 and d.path = ?2;"
                              path reference))
                references)
      (before-commit)
      (sqlite-exec db file "commit;"))
    (lambda args
      (false-if-exception (sqlite-exec db file "rollback;"))
      (apply throw args))))

(define (count-valid-paths file)
  "The number of rows of ValidPaths in the store database FILE."
  (let ((db (sqlite-open file)))
    (dynamic-wind
      (const #t)
      (lambda ()
        (match (sqlite-run db file "select count(*) from ValidPaths;")
          ((n) n)))
      (lambda () (sqlite-close db)))))


;;;
;;; Builders: real child processes.
;;;

(define %builder-script
  ;; $1 out, $2 name, $3 seconds of work, $4 the builds log, $5 the gate
  ;; (a fifo, or -); then the inputs.  It writes $out in place, as a build
  ;; without a chroot does: $out exists, half-built and not valid, from the
  ;; 'mkdir' on.  Its last line is the hash of what it wrote; the client
  ;; registers $out in the store database once it has exited, as
  ;; guix-daemon does.
  "set -e
out=$1 name=$2 work=$3 log=$4 gate=$5
shift 5
echo \"building $name\"
for input in \"$@\"; do
  test -d \"$input/bin\" || { echo \"input not complete: $input\"; exit 1; }
done
rm -rf \"$out\"                  # an invalid leftover goes, as in the daemon
mkdir -p \"$out/share/doc\"      # in place: $out exists, not valid, from here on
echo \"$name\" > \"$out/share/doc/README\"
if [ \"$gate\" != - ]; then      # half-built until a waiter has re-checked it
  read -r go < \"$gate\" || { echo \"the demo went away\"; exit 1; }
fi
sleep \"$work\"                  # the build's work
for input in \"$@\"; do echo \"$input\"; done > \"$out/share/doc/inputs\"
mkdir \"$out/bin\"
printf '#!/bin/sh\\necho %s\\n' \"$name\" > \"$out/bin/$name\"
chmod +x \"$out/bin/$name\"
echo \"$out\" >> \"$log\"
hash=$(cat \"$out/share/doc/README\" \"$out/share/doc/inputs\" \"$out/bin/$name\" | sha256sum)
echo \"sha256:${hash%% *}\"
")

;; The gate of %GATED's builder: a fifo that the demo opens for reading and
;; writing once the clients are forked, so that the builder's 'open' never
;; blocks and its 'read' ends, at end of file, if the demo goes away; the
;; demo writes "go" to it once a client's re-check has seen the output on
;; disk but not registered.  The builder waits for that, not for a time.
(define %gate #f)
(define %gate-opened? #f)

(define (open-gate-port!)
  (set! %gate (fdes->outport (open-fdes %gate-file
                                        (logior O_RDWR O_CLOEXEC)))))

(define (open-gate!)
  (when (and %gate (not %gate-opened?))
    (set! %gate-opened? #t)
    (display "go\n" %gate)
    (force-output %gate)))

(define (start-builder name)
  "Start the builder of NAME.  Return its pid and the read end of the pipe
that is its standard output and error: end of file there means it exited."
  (match (pipe)
    ((from . to)
     (let ((pid (primitive-fork)))
       (when (zero? pid)
         ;; The child: stdin from /dev/null, stdout and stderr to the pipe,
         ;; every other descriptor closed (the lock descriptors are
         ;; close-on-exec anyway), then exec; never return to Scheme.
         (catch #t
           (lambda ()
             (let ((null (open-fdes "/dev/null" O_RDONLY))
                   (out  (port->fdes to)))
               (dup2 null 0)
               (dup2 out 1)
               (dup2 out 2)
               (do ((fd 3 (+ fd 1))) ((= fd 1024))
                 (false-if-exception (close-fdes fd)))
               (apply execl "/bin/sh" "sh" "-c" %builder-script "builder"
                      (store-path name) name
                      (number->string (package-work name)) %builds-log
                      (if (equal? name %gated) %gate-file "-")
                      (map store-path (package-inputs name)))))
           (const #f))
         (primitive-_exit 127))
       (close-port to)
       (fcntl from F_SETFD FD_CLOEXEC)
       (values pid from)))))


;;;
;;; A client: one worker, driven through its pull loop.
;;;

(define-record-type <builder>
  (make-builder pid goal name start)
  builder?
  (pid       builder-pid)
  (goal      builder-goal)
  (name      builder-name)
  (start     builder-start)
  (port      builder-port set-builder-port!)      ;its output; #f at its end
  (last-line builder-last-line set-builder-last-line!))

(define (describe-exception e)
  (cond ((goalkeeper-error? e)
         (format #f "~a: ~a" (goalkeeper-error-status e)
                 (goalkeeper-error-message e)))
        ((and (exception-with-message? e) (exception-with-irritants? e))
         (or (false-if-exception
              (apply format #f (exception-message e) (exception-irritants e)))
             (exception-message e)))
        ((exception-with-message? e) (exception-message e))
        (else (object->string e))))

(define (client-main label wanted from-demo to-demo deadline)
  "Build WANTED as client LABEL; report to the demo on TO-DEMO, one datum
per line.  Return the exit status: 0 done, 3 invariant violation, 4 other
errors."
  (define (send . datum)
    (write datum to-demo)
    (newline to-demo)
    (force-output to-demo))

  (define worker #f)
  (define db #f)                                  ;its store database connection
  (define valid-at (make-hash-table))             ;name -> µs found valid
  (define names (make-hash-table))                ;goal -> package name
  (define builders (make-hash-table))             ;goal -> <builder>
  (define worst-held-by-finished 0)
  (define ran '())                                ;names of goals it ran

  (define (name-of goal) (hashq-ref names goal))

  (define (audit!)
    (let ((held (assq-ref (worker-audit worker) 'locks-held-by-finished)))
      (set! worst-held-by-finished (max worst-held-by-finished held))))

  (define (log! record)
    ;; The worker's diagnostics, as records, the moment they are made: a
    ;; goal waiting for a lock becomes a 'wait' event naming the holder's
    ;; pid, which the library asked the kernel for; a goal that became
    ;; valid while waiting says how long it waited; the rest is passed on
    ;; for --verbose.
    (let ((t (record-us record)))
      (match (log-record-kind record)
        ((or 'waits-foreign 'waits-local)
         (send 'wait t (path->name (log-record-path record))
               (log-record-holder-pid record)
               (log-record-message record)))
        ('became-valid
         (hash-set! valid-at (path->name (log-record-path record)) t)
         (send 'waited t (path->name (log-record-path record))
               (log-record-duration record)
               (log-record-message record)))
        ('on-disk-not-valid
         ;; A re-check found the output on disk but not registered in the
         ;; database: another client is still building it.  The goal keeps
         ;; waiting.
         (send 'recheck t (path->name (log-record-path record))
               (log-record-duration record)
               (log-record-message record)))
        (kind
         (send 'log t kind (log-record-message record))))
      (audit!)))

  (define (read-output! builder)
    ;; Read what BUILDER wrote so far; at end of file, stop watching it.
    (match (get-bytevector-some (builder-port builder))
      ((? eof-object?)
       (close-port (builder-port builder))
       (set-builder-port! builder #f))
      (bv
       (let ((lines (remove string-null?
                            (string-split (utf8->string bv) #\newline))))
         (unless (null? lines)
           (set-builder-last-line! builder (last lines)))))))

  (define (watched)
    ;; What run-worker waits on besides the worker and the builders'
    ;; pidfds: the demo's pipe (its end of file means the demo is gone) and
    ;; the builders' output.
    (cons (cons from-demo
                (lambda (port)
                  (when (eof-object? (read-line port))
                    (raise-exception
                     (make-exception-with-message "the demo went away")))))
          (filter-map (lambda (builder)
                        (and (builder-port builder)
                             (cons (builder-port builder)
                                   (lambda (port) (read-output! builder)))))
                      (hash-map->list (lambda (goal builder) builder)
                                      builders))))

  (define (run! goal)
    ;; The worker says GOAL may run: its inputs are built, it has the slot,
    ;; and this process holds its output lock.
    (let ((name (name-of goal)))
      (call-with-values (lambda () (start-builder name))
        (lambda (pid port)
          (let ((builder (make-builder pid goal name (elapsed-us))))
            (set-builder-port! builder port)
            (set-builder-last-line! builder #f)
            (hashq-set! builders goal builder)
            (set! ran (cons name ran))
            (send 'run (elapsed-us) name pid)
            (audit!)
            pid)))))

  (define (register! builder)
    ;; BUILDER exited 0: register its output as the daemon does, in one
    ;; transaction.  Its 'built' message goes out before the commit, with
    ;; the time taken then: no other client can find the output valid
    ;; before that message is in the demo's pipe, nor before that time.
    (let* ((name (builder-name builder))
           (hash (builder-last-line builder)))
      (unless (and hash (string-prefix? "sha256:" hash)
                   (= (string-length hash) 71))
        (raise-exception
         (make-exception-with-message
          (format #f "the builder of ~a ended without its hash (~s)" name
                  hash))))
      (register-valid-path! db %db-file (store-path name) hash
                            (disk-usage (store-path name))
                            (map store-path (package-inputs name))
                            (lambda ()
                              (send 'built (elapsed-us) name
                                    (- (elapsed-us) (builder-start builder)))))))

  (define (exited! goal status)
    ;; GOAL's builder exited; its lock is still held.
    (let* ((builder (hashq-ref builders goal))
           (code    (status:exit-val status)))
      (let loop ()                              ;the rest of its output
        (when (builder-port builder)
          (read-output! builder)
          (loop)))
      (hashq-remove! builders goal)
      (when (eqv? code 0)
        (register! builder))
      ;; Sent before run-worker reports the goal, which releases its lock:
      ;; another client cannot get the lock before this is in its pipe.
      (send 'release (elapsed-us) (builder-name builder)
            (- (elapsed-us) (builder-start builder))
            code (builder-last-line builder))
      (if (eqv? code 0) 'built 'failed)))

  (define (finished! goal outcome)
    ;; GOAL finished, whichever way; it holds no lock any more.
    (audit!)
    (let ((name (name-of goal)))
      (if (member name ran)
          (send 'reported (elapsed-us) name outcome)
          ;; When the worker found it valid: its log record's time if it
          ;; was waiting, else now (just after).
          (send 'finished (or (hash-ref valid-at name) (elapsed-us))
                name outcome))))

  (define (stop-builders!)
    ;; run-worker killed and reaped the builders if it was interrupted;
    ;; close what is left.
    (hash-for-each (lambda (goal builder)
                     (when (builder-port builder)
                       (false-if-exception (close-port (builder-port builder)))))
                   builders))

  (send 'ready (getpid))
  ;; Wait for "go" (the staggered start), bounded by the deadline.
  (let* ((left  (max 0 (- deadline (now-us))))
         (ready (select (list from-demo) '() '()
                        (quotient left 1000000) (remainder left 1000000))))
    (unless (and (pair? (car ready))
                 (equal? "go" (read-line from-demo)))
      (send 'error (elapsed-us) "never told to start")
      (primitive-_exit 4)))

  ;; Its own connection to the store database, opened after the fork, as
  ;; each guix-daemon process opens its own; its worker's validity is that
  ;; database (read-only, through the library).
  (with-exception-handler
      (lambda (e)
        (send 'error (elapsed-us) (describe-exception e))
        (primitive-_exit 4))
    (lambda ()
      (set! db (sqlite-open %db-file))
      (set! worker (apply make-worker #:max-jobs 1
                          #:legacy-hold? %legacy-hold?
                          #:recheck-interval %recheck-interval
                          (if %exists-validity?
                              '()           ;"the path exists": wrong here
                              (list #:store-database %db-file))))))
  (let ((goals (fold (lambda (name goals)
                       (let ((goal (worker-add-goal!
                                    worker (list (store-path name))
                                    #:dependencies
                                    (map (cut assoc-ref goals <>)
                                         (package-inputs name)))))
                         (hashq-set! names goal name)
                         (acons name goal goals)))
                     '()
                     (closure wanted))))
    (send 'started (elapsed-us) (length goals)
          (assq-ref (worker-audit worker) 'max-jobs)))

  ;; The pull loop is run-worker's; the demo's parts are its hooks.  The
  ;; demo's deadline is enforced by the demo process, which kills the
  ;; clients when it passes.
  (let ((result (with-exception-handler
                    (lambda (e) e)
                  (lambda ()
                    (run-worker worker run!
                                #:on-exit exited!
                                #:on-finished finished!
                                #:on-log log!
                                #:watch watched)
                    'done)
                  #:unwind? #t)))
    (stop-builders!)
    (sqlite-close db)
    (let ((audit (false-if-exception (worker-audit worker))))
      (define (field key) (and audit (assq-ref audit key)))
      (match result
        ('done
         (send 'done (elapsed-us) worst-held-by-finished (field 'violations)
               (field 'handoffs))
         (worker-close! worker)
         0)
        ((and (? goalkeeper-error?)
              (= goalkeeper-error-status 'invariant-violation))
         (when audit
           (set! worst-held-by-finished
             (max worst-held-by-finished (field 'locks-held-by-finished))))
         (send 'violation (elapsed-us) (goalkeeper-error-message result)
               worst-held-by-finished (field 'violations))
         ;; Closing the worker releases what its finished goals kept.
         (send 'release-all (elapsed-us) ran)
         (false-if-exception (worker-close! worker))
         3)
        (e
         (send 'error (elapsed-us) (describe-exception e))
         (false-if-exception (worker-close! worker))
         4)))))


;;;
;;; The demo process: starts the clients, tells the story.
;;;

(define %tty?
  (and (isatty? (current-output-port))
       (not (equal? (getenv "TERM") "dumb"))))

(define %color?
  (and %tty? (not (getenv "NO_COLOR"))))

(define (paint code text)
  (if %color?
      (string-append "\x1b[" code "m" text "\x1b[0m")
      text))

(define (client-color label)
  (match label ("A" "36") ("B" "35") ("C" "33") (_ "0")))

(define-record-type <client>
  (%make-client label wanted pid up down)
  client?
  (label   client-label)
  (wanted  client-wanted)
  (pid     client-pid)
  (up      client-up)                             ;its events
  (down    client-down)                           ;"go"
  (open?   client-open? set-client-open?!)
  (go?     client-go? set-client-go?!)
  (status  client-status set-client-status!)      ;exit status
  (result  client-result set-client-result!)      ;'done, 'violation, …
  (busy?   client-busy? set-client-busy?!)        ;has it run, waited or ended?
  (building client-building set-client-building!) ;name or #f
  (goals   client-goals set-client-goals!)
  (built   client-built set-client-built!)
  (valid   client-valid set-client-valid!)
  (failed  client-failed set-client-failed!)
  (waits   client-waits set-client-waits!)        ;alist name -> start
  (nwaits  client-nwaits set-client-nwaits!)
  (waited  client-waited set-client-waited!)      ;µs
  (waiting-since client-waiting-since set-client-waiting-since!)
  (start   client-start set-client-start!)
  (end     client-end set-client-end!)
  (held-by-finished client-held-by-finished set-client-held-by-finished!)
  (violations client-violations set-client-violations!))

(define (make-client label wanted pid up down)
  (let ((client (%make-client label wanted pid up down)))
    (set-client-open?! client #t)
    (set-client-go?! client #f)
    (set-client-status! client #f)
    (set-client-result! client #f)
    (set-client-busy?! client #f)
    (set-client-building! client #f)
    (set-client-goals! client 0)
    (set-client-built! client 0)
    (set-client-valid! client 0)
    (set-client-failed! client 0)
    (set-client-waits! client '())
    (set-client-nwaits! client 0)
    (set-client-waited! client 0)
    (set-client-waiting-since! client #f)
    (set-client-start! client #f)
    (set-client-end! client #f)
    (set-client-held-by-finished! client 0)
    (set-client-violations! client 0)
    client))

(define (spawn-client label wanted others deadline)
  "Fork client LABEL.  OTHERS are the demo's ends of the pipes of the
clients started before, which the child must not keep open."
  (match (list (pipe) (pipe))
    (((up-in . up-out) (down-in . down-out))
     (force-output (current-output-port))
     (let ((pid (primitive-fork)))
       (when (zero? pid)
         (primitive-_exit
          (catch #t
            (lambda ()
              ;; Its own process group, which its builders inherit: the
              ;; demo can stop a client and its builders at once.
              (setpgid 0 0)
              (close-port up-in)
              (close-port down-out)
              (for-each (lambda (port) (false-if-exception (close-port port)))
                        others)
              (fcntl up-out F_SETFD FD_CLOEXEC)
              (fcntl down-in F_SETFD FD_CLOEXEC)
              (client-main label wanted down-in up-out deadline))
            (lambda _ 4))))
       (false-if-exception (setpgid pid pid))   ;either side may do it first
       (close-port up-out)
       (close-port down-in)
       (make-client label wanted pid up-in down-out)))))

(define (kill-client! client)
  "Stop CLIENT and its builders (its process group) with SIGKILL."
  (false-if-exception (kill (- (client-pid client)) SIGKILL))
  (false-if-exception (kill (client-pid client) SIGKILL)))

;; What the demo knows across clients.
(define %released (make-hash-table))      ;name -> µs its holder released it
(define %registered (make-hash-table))    ;name -> µs it was registered
(define %found-valid '())                 ;(label name µs) of already-valid goals
(define %rechecks '())                    ;(label name µs): on disk, not valid
(define %waited (make-hash-table))        ;(label . name) -> seconds waited
(define %built-by (make-hash-table))      ;name -> label
(define %handoffs '())                    ;latencies in µs
(define %pid->label (make-hash-table))
(define %progress-shown? #f)

(define (clear-progress!)
  (when %progress-shown?
    (display "\r\x1b[K")
    (set! %progress-shown? #f)))

(define* (say client t verb text #:optional color)
  (clear-progress!)
  (format #t "  ~7,3f  ~a  ~a ~a~%"
          (seconds t)
          (if client
              (paint (client-color (client-label client)) (client-label client))
              " ")
          (let ((verb (string-pad-right verb (max 8 (string-length verb)))))
            (if color (paint color verb) verb))
          (if color (paint color text) text)))

(define (loud text)
  (clear-progress!)
  (format #t "~a~%" (paint "1;31" text)))

(define (abbreviate-store-paths text)
  "TEXT with the store file names of the scenario replaced by their
package names."
  (fold (lambda (name text)
          (let ((path (store-path name)))
            (let loop ((text text))
              (match (string-contains text path)
                (#f text)
                (i (loop (string-append (substring text 0 i) name
                                        (substring text
                                                   (+ i (string-length path))))))))))
        text
        (map first %packages)))

(define (who pid)
  (match (and pid (hashv-ref %pid->label pid))
    (#f (if pid (format #f "pid ~a" pid) "another process (pid unknown)"))
    (label (format #f "pid ~a = client ~a" pid label))))

(define (begin-wait! client name t)
  (when (null? (client-waits client))
    (set-client-waiting-since! client t))
  (set-client-waits! client (acons name t (client-waits client)))
  (set-client-nwaits! client (+ 1 (client-nwaits client))))

(define (end-wait! client name t)
  "If CLIENT was waiting for NAME's lock, stop; return the wait's start or
#f.  The client's waiting time is the time at least one of its goals
waited: waits overlap."
  (match (assoc name (client-waits client))
    (#f #f)
    ((_ . start)
     (set-client-waits! client (alist-delete name (client-waits client)))
     (when (null? (client-waits client))
       (set-client-waited! client (+ (client-waited client)
                                     (- t (client-waiting-since client)))))
     start)))

(define (handle! client message)
  (define label (client-label client))
  (match message
    (('ready pid) #t)
    (('started t goals max-jobs)
     (set-client-start! client t)
     (set-client-goals! client goals)
     (say client t "start"
          (format #f "pid ~a: guix build ~a  (~a goals, max-jobs ~a)"
                  (client-pid client) (client-wanted client) goals max-jobs)))
    (('run t name pid)
     (set-client-busy?! client #t)
     (set-client-building! client name)
     (say client t "build" (format #f "~a (builder pid ~a)" name pid)))
    (('wait t name pid holder)
     (begin-wait! client name t)
     (set-client-busy?! client #t)
     (say client t "wait"
          (format #f "~a: lock held by ~a; waiting, holding no lock"
                  name (who pid))))
    (('waited t name seconds text)
     ;; The worker's own measure of the wait (its log record).
     (hash-set! %waited (cons label name) seconds)
     (when (option 'verbose?)
       (say client t "log" (abbreviate-store-paths text))))
    (('log t kind text)
     (when (option 'verbose?)
       (say client t "log"
            (format #f "~a: ~a" kind (abbreviate-store-paths text)))))
    (('built t name build-us)
     ;; Its builder exited 0 and the client is registering its output: T
     ;; was taken just before the commit.
     (hash-set! %registered name t)
     (hash-set! %built-by name label)
     (set-client-built! client (+ 1 (client-built client)))
     (say client t "built"
          (format #f "~a in ~,2f s, registered in db.sqlite; goal finished, ~a"
                  name (seconds build-us)
                  (if %legacy-hold?
                      (paint "1;31" "lock KEPT (legacy hold)")
                      "lock released"))))
    (('release t name build-us code last-line)
     (hash-set! %released name t)
     (set-client-building! client #f)
     (unless (eqv? code 0)
       (say client t "FAILED"
            (format #f "~a: builder exited ~a: ~a" name code
                    (or last-line "no output"))
            "1;31")))
    (('recheck t name waited text)
     ;; The worker's record: its re-check found the output on disk but not
     ;; registered, and the goal keeps waiting.
     (set! %rechecks (cons (list label name t) %rechecks))
     (say client t "re-check"
          (format #f "~a exists on disk but is not registered in db.sqlite: \
still being built, keep waiting" name))
     (when (option 'verbose?)
       (say client t "log" (abbreviate-store-paths text)))
     (when (equal? name %gated)
       (open-gate!)))
    (('reported t name outcome)
     (unless (eq? outcome 'built)
       (when (hash-ref %built-by name)         ;the builder said it built it
         (hash-remove! %built-by name)
         (set-client-built! client (- (client-built client) 1)))
       (set-client-failed! client (+ 1 (client-failed client)))
       (say client t "FAILED" (format #f "~a: recorded as ~a" name outcome)
            "1;31")))
    (('finished t name outcome)
     (set-client-busy?! client #t)
     (let ((start (end-wait! client name t)))
       (match outcome
         ('already-valid
          (set-client-valid! client (+ 1 (client-valid client)))
          (set! %found-valid (cons (list label name t) %found-valid))
          (when (equal? name %gated)              ;see 'check-store'
            (open-gate!))
          (let* ((by       (hash-ref %built-by name))
                 (released (hash-ref %released name))
                 (handoff  (and start released (>= released start)
                                (- t released)))
                 ;; How long the goal waited, as its worker measured it.
                 (waited   (or (hash-ref %waited (cons label name))
                               (and start (seconds (- t start))))))
            (when handoff
              (set! %handoffs (cons handoff %handoffs)))
            (say client t "valid"
                 (string-append
                  name ": already valid, "
                  (cond (handoff "lock released")
                        (start "noticed while waiting")
                        (else "no lock taken"))
                  (match (filter-map
                          identity
                          (list (and by (format #f "built by ~a" by))
                                (cond (handoff
                                       (format #f "hand-off ~a, waited ~,2f s"
                                               (format-latency handoff)
                                               waited))
                                      (start
                                       (format #f "waited ~,2f s" waited))
                                      (else #f))))
                    (() "")
                    (notes (string-append " (" (string-join notes "; ")
                                          ")")))))))
         (_
          (set-client-failed! client (+ 1 (client-failed client)))
          (say client t "FAILED" (format #f "~a: ~a" name outcome)
               "1;31")))))
    (('done t worst violations handoffs)
     (set-client-end! client t)
     (set-client-result! client 'done)
     (set-client-held-by-finished! client worst)
     (set-client-violations! client (or violations 0))
     (say client t "done"
          (format #f "all goals finished; audit: ~a locks held by finished \
goals, ~a violations" worst violations)))
    (('violation t text worst violations)
     (set-client-end! client t)
     (set-client-result! client 'violation)
     (set-client-held-by-finished! client worst)
     (set-client-violations! client (or violations 1))
     (say client t "VIOLATION"
          "worker-report! raised &goalkeeper-error 'invariant-violation:"
          "1;31")
     (say client t "" (abbreviate-store-paths text) "1;31")
     (say client t ""
          (format #f "audit: ~a lock(s) held by finished goals; ~a stops and \
closes its worker" worst label)
          "1;31")
     ;; Who waits for a lock this client's finished goals keep.
     (for-each
      (lambda (name)
        (let ((waiters (filter-map (lambda (other)
                                     (and (not (eq? other client))
                                          (assoc name (client-waits other))
                                          (client-label other)))
                                   (current-clients))))
          (unless (null? waiters)
            (say #f t ""
                 (format #f "meanwhile ~a ~a for ~a, whose lock ~a's finished \
goal keeps: where guix-daemon deadlocked"
                         (string-join waiters " and ")
                         (if (= 1 (length waiters)) "waits" "wait")
                         name label)
                 "1;31"))))
      (filter (lambda (name) (equal? label (hash-ref %built-by name)))
              (map first %packages))))
    (('release-all t names)
     (for-each (cut hash-set! %released <> t) names))
    (('error t text)
     (set-client-end! client t)
     (set-client-result! client 'error)
     (say client t "ERROR" text "1;31"))
    (other
     (say client (elapsed-us) "?" (object->string other)))))

(define %clients '())
(define (current-clients) %clients)

(define (message-time message)
  (match message
    ((_ (? number? t) . _) t)
    (_ (elapsed-us))))

(define (read-available! clients)
  "Read every complete message the clients have sent so far, without
blocking; return them as (CLIENT . DATUM) pairs.  A client whose pipe is
at end of file is marked closed."
  (let loop ((acc '()))
    (let* ((open  (filter client-open? clients))
           (ready (if (null? open)
                      '()
                      (car (select (map client-up open) '() '() 0 0)))))
      (if (null? ready)
          acc
          (loop
           (fold (lambda (client acc)
                   (if (memq (client-up client) ready)
                       (let ((line (read-line (client-up client))))
                         (if (eof-object? line)
                             (begin (set-client-open?! client #f) acc)
                             (cons (cons client
                                         (or (false-if-exception
                                              (call-with-input-string line read))
                                             `(garbage ,line)))
                                   acc)))
                       acc))
                 acc
                 open))))))

(define (client-state-text client)
  "What CLIENT is doing, for the progress line."
  (cond ((client-result client)
         => (match-lambda
              ('done "done")
              ('violation "INVARIANT VIOLATION")
              (other (symbol->string other))))
        ((client-building client)
         => (lambda (name) (string-append "building " (short name))))
        ((pair? (client-waits client))
         (string-append "waiting for "
                        (string-join (map (compose short car)
                                          (client-waits client))
                                     ", ")))
        ((client-start client) "scheduling")
        ((client-go? client) "starting")
        (else "not started yet")))

(define (progress! clients)
  (when %tty?
    (let* ((total (length %packages))
           (built (hash-count (const #t) %built-by))
           (bar   (string-append (make-string built #\#)
                                 (make-string (- total built) #\.)))
           (text  (format #f "  [~a] ~a/~a built  ~5,1f s   ~a" bar built total
                          (seconds (elapsed-us))
                          (string-join
                           (map (lambda (c)
                                  (format #f "~a: ~a" (client-label c)
                                          (client-state-text c)))
                                clients)
                           " | ")))
           (width (or (and=> (getenv "COLUMNS") string->number) 100)))
      (display "\r\x1b[K")
      (display (if (> (string-length text) (- width 1))
                   (substring text 0 (- width 1))
                   text))
      (force-output)
      (set! %progress-shown? #t))))

(define (start-next! clients)
  "Staggered starts: tell the first client that was not told yet to go
once every client before it is busy (has run, waited or ended)."
  (let loop ((clients clients))
    (match clients
      (() #t)
      ((client . rest)
       (cond ((not (client-go? client))
              (set-client-go?! client #t)
              (false-if-exception
               (begin (display "go\n" (client-down client))
                      (force-output (client-down client)))))
             ((not (or (client-busy? client) (client-result client)))
              #t)                               ;not busy yet
             (else (loop rest)))))))

(define (run-demo deadline)
  (let loop ()
    (let ((open (filter client-open? %clients)))
      (cond
       ((null? open) 'finished)
       ((>= (now-us) deadline) 'timeout)
       (else
        (let ((limit (min (- deadline (now-us)) (if %tty? 100000 1000000))))
          (catch 'system-error
            (lambda ()
              (select (map client-up open) '() '()
                      (quotient limit 1000000) (remainder limit 1000000)))
            (lambda args
              (unless (= EINTR (system-error-errno args))
                (apply throw args))))
          ;; Everything available, in timestamp order: a client's message
          ;; about a lock hand-off is then printed after the release it
          ;; followed, even when both arrive in the same round.
          (for-each (match-lambda ((client . message) (handle! client message)))
                    (sort (read-available! %clients)
                          (lambda (a b)
                            (< (message-time (cdr a)) (message-time (cdr b))))))
          (start-next! %clients)
          (progress! %clients)
          (loop)))))))

(define (median numbers)
  (let ((sorted (sort numbers <))
        (n      (length numbers)))
    (if (odd? n)
        (list-ref sorted (quotient n 2))
        (/ (+ (list-ref sorted (- (quotient n 2) 1))
              (list-ref sorted (quotient n 2)))
           2))))

(define (check-store)
  "Return a list of problems with the store after a normal run."
  (let* ((outputs (map (compose store-path first) %packages))
         (log     (if (file-exists? %builds-log)
                      (string-tokenize (call-with-input-file %builds-log
                                         read-string))
                      '())))
    (append
     (filter-map (lambda (output)
                   (and (not (file-exists? output))
                        (format #f "~a was not built" (path->name output))))
                 outputs)
     (filter-map (lambda (output)
                   (let ((n (count (cut string=? output <>) log)))
                     (and (> n 1)
                          (format #f "~a was built ~a times"
                                  (path->name output) n))))
                 outputs)
     (match (false-if-exception (lock-paths outputs #:wait? #f))
       (#f '("a lock is still held after every client exited"))
       (lockset
        (lockset-delete-on-release! lockset)
        (lockset-release! lockset)
        '()))
     (check-database outputs))))

(define (found-valid-before-registration)
  "Return a list of problems: the goals that were found valid before their
output was registered in the database (the time of the registration is
taken just before its commit)."
  (filter-map (match-lambda
                ((label name t)
                 (let ((registered (hash-ref %registered name)))
                   (and (or (not registered) (< t registered))
                        (format #f "~a found ~a valid at ~,3f s, before it \
was registered~a" label name (seconds t)
                                (if registered
                                    (format #f " (at ~,3f s)"
                                            (seconds registered))
                                    ""))))))
              (reverse %found-valid)))

(define (check-database outputs)
  "Return a list of problems with the store database after a normal run:
every output registered, once; a re-check saw the output of %GATED on disk
but not registered."
  (define (database-error e)
    (list (string-append "db.sqlite: " (describe-exception e))))
  (with-exception-handler database-error
    (lambda ()
      (append
       (filter-map (lambda (output)
                     (and (not (store-path-valid? %db-file output))
                          (format #f "~a is not registered in db.sqlite"
                                  (path->name output))))
                   outputs)
       (let ((rows (count-valid-paths %db-file)))
         (if (= rows (length outputs))
             '()
             (list (format #f "db.sqlite has ~a paths in ValidPaths, not ~a"
                           rows (length outputs)))))
       (if (any (lambda (recheck) (equal? %gated (second recheck))) %rechecks)
           '()
           (list (format #f "no re-check saw ~a on disk but not registered"
                         %gated)))))
    #:unwind? #t))

(define (print-table clients)
  (define (row . cells)
    (apply format #t "  ~6a ~14a ~5@a ~6@a ~12@a ~11@a ~10@a ~10@a  ~a~%" cells))
  (newline)
  (row "client" "asked for" "goals" "built" "found valid" "lock waits"
       "waited" "wall time" "result")
  (for-each
   (lambda (c)
     (row (client-label c) (client-wanted c) (client-goals c) (client-built c)
          (client-valid c) (client-nwaits c)
          (format #f "~,2f s" (seconds (client-waited c)))
          (if (and (client-start c) (client-end c))
              (format #f "~,2f s" (seconds (- (client-end c) (client-start c))))
              "-")
          (match (client-result c)
            ('done (if (eqv? 0 (client-status c))
                       "ok"
                       (format #f "exit ~a" (client-status c))))
            ('violation (paint "1;31" "INVARIANT VIOLATION"))
            (#f (paint "1;31" "killed (timeout)"))
            (other (paint "1;31" (symbol->string other))))))
   clients)
  (row "all" "" (reduce + 0 (map client-goals clients))
       (reduce + 0 (map client-built clients))
       (reduce + 0 (map client-valid clients))
       (reduce + 0 (map client-nwaits clients))
       (format #f "~,2f s" (seconds (reduce + 0 (map client-waited clients))))
       "" ""))

(define (main)
  (setvbuf (current-output-port) 'line)
  (set! %base (mkdtemp (string-append (or (getenv "TMPDIR") "/tmp")
                                      "/gk-demo-XXXXXX")))
  (set! %store (string-append %base "/store"))
  (set! %db-file (string-append %base "/var/guix/db/db.sqlite"))
  (set! %builds-log (string-append %base "/builds.log"))
  (set! %gate-file (string-append %base "/gate"))
  (mkdir %store #o755)
  (for-each (cut mkdir <> #o755)
            (map (cut string-append %base <>) '("/var" "/var/guix" "/var/guix/db")))
  (mknod %gate-file 'fifo #o600 0)
  (force %path->name)
  (dynamic-wind
    (const #t)
    run-scenario
    (lambda ()
      ;; However the demo ends ('exit' unwinds too); the clients leave with
      ;; 'primitive-_exit' and never get here.
      (unless (option 'keep?)
        (delete-file-recursively %base)))))

(define %interrupted? #f)

(define (run-scenario)
  (with-exception-handler
      (lambda (e)
        (loud (string-append "FAILED: cannot create the store database: "
                             (describe-exception e)))
        (finish 2))
    (lambda ()
      (create-store-database! %db-file)))
  (let ((timeout (option 'timeout)))
    (format #t "goalkeeper demo: Guix bug #31785, replayed~%")
    (format #t "  Three clients build overlapping package graphs in one store, each with
  max-jobs 1.  In guix-daemon a goal kept its output locks until the goal
  object died, long after it finished, so such clients waited on each other
  for ever.  Here a goal's locks go the moment it finishes.~%~%")
    (format #t "  library   ~a (goalkeeper ~a)~%" (goalkeeper-library-file)
            (goalkeeper-version))
    (format #t "  store     ~a  (fresh and empty; OFD locks on PATH.lock~a)~%"
            %store (if (option 'keep?) "; kept afterwards" ""))
    (format #t "  database  ~a  (Guix's schema, WAL; empty)~%" %db-file)
    (format #t "  validity  ~a~%            a goal waiting for another \
client's lock re-checks it every ~a s~%"
            (if %exists-validity?
                (paint "1;31" "--exists-validity: a path is valid when it \
EXISTS (no #:store-database)")
                "registered in db.sqlite's ValidPaths (#:store-database), \
not \"exists\"")
            %recheck-interval)
    (format #t "  mode      ~a~%"
            (if %legacy-hold?
                (paint "1;31" "--legacy-hold: finished goals KEEP their locks, \
as the C++ daemon's did")
                "normal: a goal releases its locks when it finishes"))
    (format #t "  builders  /bin/sh: check the inputs, write $out in place, 'sleep' \
0.1-0.5 s as the work,~%            finish $out, exit; the client then registers \
$out in db.sqlite, in one~%            transaction, as guix-daemon does, and only \
then releases its lock~%")
    (format #t "            ~a's builder, half-built, waits on a fifo until a waiter's \
re-check saw it~%" (short %gated))
    (for-each (match-lambda
                ((label . wanted)
                 (format #t "  client ~a  guix build ~14a needs ~a~%"
                         (paint (client-color label) label) wanted
                         (string-join (map short (closure wanted))))))
              %client-specs)
    (format #t "  B starts once A is building, C once B is busy; every wait \
is bounded (~a s)~%" timeout)
    (format #t "  hand-off: from the holder's release to the waiter's next \
event (a kernel wake-up, not a poll)~%~%")
    (format #t "     time  who  what~%")

    (let ((deadline (+ (now-us) (inexact->exact (round (* timeout 1e6))))))
      (set! %t0 (now-us))
      (set! %clients
        (fold (lambda (spec clients)
                (match spec
                  ((label . wanted)
                   (let ((client (spawn-client
                                  label wanted
                                  (append-map (lambda (c)
                                                (list (client-up c)
                                                      (client-down c)))
                                              clients)
                                  deadline)))
                     (hashv-set! %pid->label (client-pid client) label)
                     (append clients (list client))))))
              '()
              %client-specs))
      (open-gate-port!)                         ;after the forks: see %gate
      (start-next! %clients)
      ;; Interrupted: stop the clients and their builders, remove the
      ;; store, and go.
      (for-each (lambda (signal)
                  (sigaction signal
                    (lambda (signal)
                      (unless %interrupted? ;a second signal: already going
                        (set! %interrupted? #t)
                        (clear-progress!)
                        (format #t "~%interrupted; stopping the clients~%")
                        (for-each kill-client! %clients)
                        (for-each (lambda (c)
                                    (false-if-exception
                                     (waitpid (client-pid c))))
                                  %clients)
                        (exit 130)))))
                (list SIGINT SIGTERM SIGHUP))

      (let ((outcome (run-demo deadline)))
        (clear-progress!)
        (when (eq? outcome 'timeout)
          (loud (format #f "~%TIMEOUT: the clients did not finish within ~a s"
                        timeout))
          (for-each (lambda (c)
                      (when (client-open? c)
                        (loud (format #f "  client ~a (pid ~a): ~a; killed"
                                      (client-label c) (client-pid c)
                                      (client-state-text c)))
                        (kill-client! c)))
                    %clients))
        ;; Every client has closed its pipe (exited) or was killed.
        (for-each (lambda (c)
                    (set-client-status!
                     c (status:exit-val (cdr (waitpid (client-pid c))))))
                  %clients)

        (print-table %clients)
        (newline)
        (let* ((handoffs   (reverse %handoffs))
               (held       (reduce + 0 (map client-held-by-finished %clients)))
               (violations (reduce + 0 (map client-violations %clients)))
               (all-done?  (every (lambda (c)
                                    (and (eq? 'done (client-result c))
                                         (eqv? 0 (client-status c))))
                                  %clients))
               (problems   (append
                            (if (and all-done? (not %legacy-hold?))
                                (check-store)
                                '())
                            ;; However the run ended.
                            (found-valid-before-registration))))
          (unless (null? handoffs)
            (format #t "  hand-offs   ~a locks passed between clients: release -> \
waiter's event ~a median, ~a max~%"
                    (length handoffs) (format-latency (median handoffs))
                    (format-latency (apply max handoffs)))
            (format #t "              (guix-daemon retries a busy lock every \
5 s: 2.5 s median)~%"))
          (when (and all-done? (null? problems) (not %legacy-hold?))
            (format #t "  outputs     ~a distinct, each built exactly once \
(the builders' log); every lock is free~%"
                    (length %packages))
            (format #t "  database    ~a paths in ValidPaths, each registered \
before any client found it valid~%"
                    (length %packages))
            (format #t "              ~a re-check(s) found an output on disk \
but not registered: the waiter kept waiting~%"
                    (length %rechecks)))
          (for-each (lambda (problem) (loud (string-append "  PROBLEM: " problem)))
                    problems)
          (format #t "  ledger      ~a violation(s) reported by the workers' \
invariant checks~%" violations)
          (cond
           ((and (zero? held) (zero? violations) all-done? (null? problems)
                 (not %legacy-hold?))
            (format #t "  ~a~%" (paint "1;32" "0 locks held by finished goals"))
            (finish 0))
           ((or (positive? held) (positive? violations))
            (newline)
            (loud "  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!")
            (loud (format #f "  !!! INVARIANT VIOLATION: ~a lock(s) held by finished goals"
                          held))
            (loud "  !!! A finished goal kept its output locks (Guix bug #31785). The")
            (loud "  !!! workers' ledger refused the call that finished it and the audit")
            (loud "  !!! counted the lock; the clients stopped instead of deadlocking.")
            (loud "  !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!")
            (format #t "  ~a locks held by finished goals~%" held)
            (finish 1))
           (%legacy-hold?
            (loud "  FAILED: the clients kept locks after their goals finished, \
but no invariant check caught it")
            (finish 2))
           (else
            (when %exists-validity?
              (loud "  With \"the path exists\" as validity, a goal took as valid an \
output that")
              (loud "  its builder was still writing: a real store needs \
#:store-database."))
            (loud "  FAILED: see above")
            (finish 2))))))))

(define (finish status)
  (exit status))

(main)

;;; 31785.scm ends here
