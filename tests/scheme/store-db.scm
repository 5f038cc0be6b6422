;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-store-db)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (system foreign)
  #:use-module (system foreign-library)
  #:use-module (rnrs bytevectors)
  #:use-module (rnrs io ports)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64))

;;; The store database through the Guile API: 'store-path-valid?' and
;;; make-worker's #:store-database, with real SQLite databases written here
;;; through the system libsqlite3 (called with the FFI, as goalkeeper itself
;;; links it), every bad input with the status that names it, and a
;;; database that turns bad while a worker runs.  The central case of issue
;;; 11: a goal waiting on a lock whose holder writes the output in place
;;; keeps waiting while the output exists but is not registered.


;;;
;;; libsqlite3, to write databases as the daemon does.
;;;

(define %sqlite
  (delay (load-foreign-library "libsqlite3" #:extensions '(".so.0" ".so"))))

(define (sqlite-procedure name return-type arg-types)
  (let ((proc (delay (foreign-library-function (force %sqlite) name
                                               #:return-type return-type
                                               #:arg-types arg-types))))
    (lambda args (apply (force proc) args))))

(define %sqlite3-open (sqlite-procedure "sqlite3_open" int '(* *)))
(define %sqlite3-exec (sqlite-procedure "sqlite3_exec" int '(* * * * *)))
(define %sqlite3-errmsg (sqlite-procedure "sqlite3_errmsg" '* '(*)))
(define %sqlite3-close (sqlite-procedure "sqlite3_close" int '(*)))

(define (sqlite-open file)
  "Open FILE (creating it) and return the connection, a pointer."
  (let* ((out (make-bytevector (sizeof '*) 0))
         (rc  (%sqlite3-open (string->pointer file) (bytevector->pointer out)))
         (db  (make-pointer (bytevector-uint-ref out 0 (native-endianness)
                                                 (sizeof '*)))))
    (unless (zero? rc)
      (error "sqlite3_open" file rc))
    db))

(define (sqlite-exec db sql)
  (unless (zero? (%sqlite3-exec db (string->pointer sql) %null-pointer
                                %null-pointer %null-pointer))
    (error "sqlite3_exec" sql (pointer->string (%sqlite3-errmsg db)))))

(define (sqlite-close db)
  (unless (zero? (%sqlite3-close db))
    (error "sqlite3_close")))

(define (call-with-sqlite file proc)
  (let ((db (sqlite-open file)))
    (dynamic-wind
      (const #t)
      (lambda () (proc db))
      (lambda () (sqlite-close db)))))

(define (register! db path)
  (sqlite-exec db (string-append
                   "insert into ValidPaths (path, hash, registrationTime) "
                   "values ('" path "', 'sha256:0', 1)")))

(define (create-database file journal paths)
  "Create FILE with Guix's ValidPaths table in JOURNAL mode, with PATHS."
  (call-with-sqlite file
    (lambda (db)
      (sqlite-exec db (string-append "pragma journal_mode = " journal))
      (sqlite-exec db "create table ValidPaths (id integer primary key \
autoincrement not null, path text unique not null, hash text not null, \
registrationTime integer not null, deriver text, narSize integer)")
      (for-each (lambda (path) (register! db path)) paths)))
  file)

(define (register-path! file path)
  (call-with-sqlite file (lambda (db) (register! db path))))

(define* (overwrite! file #:key (offset 0))
  "Overwrite FILE in place (same inode, same size) from OFFSET with
garbage; return its previous contents."
  (let* ((before (call-with-input-file file get-bytevector-all
                                       #:binary #t))
         (port (open-file file "r+b")))
    (seek port offset SEEK_SET)
    (put-bytevector port (make-bytevector (- (bytevector-length before) offset)
                                          (char->integer #\g)))
    (close-port port)
    before))

(define (restore! file bytes)
  (let ((port (open-file file "r+b")))
    (put-bytevector port bytes)
    (close-port port)))

(define (log-mentions? lines . needles)
  (any (lambda (line)
         (every (lambda (needle) (string-contains line needle)) needles))
       lines))

(define (drive-until worker done? seconds)
  "Pull WORKER's events, waiting on its (wait …) events, until (DONE?) or
SECONDS pass; return the events that were not waits."
  (let ((deadline (+ (get-internal-real-time)
                     (* seconds internal-time-units-per-second))))
    (let loop ((seen '()))
      (if (or (done?) (> (get-internal-real-time) deadline))
          (reverse seen)
          (match (worker-next-event worker)
            (('wait fd timeout)
             (select (list fd) '() '() 0
                     (inexact->exact (round (* 1e6 (min (or timeout 0.1) 0.1)))))
             (loop seen))
            (event (loop (cons event seen))))))))


(test-begin "store-db")

(call-with-temporary-store
 (lambda (store)
   (define (path name) (store-path store name))
   (define state (path "state"))
   (mkdir state #o700)
   (define (db name) (string-append state "/" name))
   (define valid (path "aaa-valid"))
   (define written (path "bbb-written"))
   (define good (create-database (db "db.sqlite") "wal" (list valid)))
   (define rollback (create-database (db "rollback.sqlite") "delete" (list valid)))
   (define garbage (db "garbage.sqlite"))
   (define empty (db "empty.sqlite"))
   (define no-table (db "other.sqlite"))
   (define corrupt (create-database (db "corrupt.sqlite") "delete" (list valid)))
   (call-with-output-file garbage
     (lambda (port) (display (make-string 4096 #\x) port)))
   (call-with-output-file empty (const #t))
   (call-with-sqlite no-table
     (lambda (db) (sqlite-exec db "create table Other (x)")))
   ;; Keep the header and schema page, garble ValidPaths' pages.
   (overwrite! corrupt #:offset 4096)
   (write-output written "half-built, in place")

   ;;
   ;; store-path-valid?
   ;;

   (test-equal "a registered path is valid; an existing unregistered one is not"
     '(#t #f)
     (list (store-path-valid? good valid) (store-path-valid? good written)))

   (test-equal "the same through a rollback-journal database"
     '(#t #f)
     (list (store-path-valid? rollback valid)
           (store-path-valid? rollback written)))

   (for-each
    (match-lambda
      ((what status file thunk)
       (test-equal (string-append what ": " (symbol->string status))
         status (error-status thunk))
       (when file
         (test-assert (string-append what ": the message names the file")
           (string-contains (error-message thunk) file)))))
    `(("missing database" store-db-missing ,(db "missing.sqlite")
       ,(lambda () (store-path-valid? (db "missing.sqlite") valid)))
      ("a directory" store-db-not-sqlite ,state
       ,(lambda () (store-path-valid? state valid)))
      ("not SQLite" store-db-not-sqlite ,garbage
       ,(lambda () (store-path-valid? garbage valid)))
      ("an empty file" store-db-no-valid-paths ,empty
       ,(lambda () (store-path-valid? empty valid)))
      ("no ValidPaths" store-db-no-valid-paths ,no-table
       ,(lambda () (store-path-valid? no-table valid)))
      ("corrupt" store-db ,corrupt
       ,(lambda () (store-path-valid? corrupt valid)))
      ("relative database" invalid-path "var/guix/db/db.sqlite"
       ,(lambda () (store-path-valid? "var/guix/db/db.sqlite" valid)))
      ("relative store path" invalid-path ,good
       ,(lambda () (store-path-valid? good "gnu/store/x")))
      ("NUL in the database name" invalid-path #f
       ,(lambda () (store-path-valid? (string-append good "\x00x") valid)))
      ("NUL in the store path" invalid-path #f
       ,(lambda () (store-path-valid? good (string-append valid "\x00x"))))
      ("database not a string" invalid-argument #f
       ,(lambda () (store-path-valid? 'db valid)))
      ("store path not a string" invalid-argument #f
       ,(lambda () (store-path-valid? good 42)))))

   ;; Locked past the busy timeout (5 s) by a connection of this process
   ;; holding an exclusive transaction, as the daemon's own would.
   (let ((writer (sqlite-open rollback)))
     (sqlite-exec writer "begin exclusive")
     (test-equal "a database locked past the busy timeout: store-db-locked"
       'store-db-locked
       (error-status (lambda () (store-path-valid? rollback valid))))
     (sqlite-exec writer "rollback")
     (sqlite-close writer))
   (test-assert "…and valid again once the writer lets go"
     (store-path-valid? rollback valid))

   ;; A database this process may not read: a child that drops root (the
   ;; store is 0700), or a file with mode 0 when not root.
   (test-equal "an unreadable database: store-db-unreadable"
     'store-db-unreadable
     (if (zero? (getuid))
         (let ((child (fork-child
                       (lambda (in out)
                         (setgid 65534)
                         (setuid 65534)
                         (child-reply out (error-status
                                           (lambda ()
                                             (store-path-valid? good valid))))))))
           (let ((status (child-receive child)))
             (child-wait child)
             status))
         (let ((file (create-database (db "mode0.sqlite") "delete" '())))
           (chmod file 0)
           (error-status (lambda () (store-path-valid? file valid))))))

   ;;
   ;; make-worker #:store-database
   ;;

   (for-each
    (match-lambda
      ((what status options)
       (test-equal (string-append "make-worker, " what ": "
                                  (symbol->string status))
         status (error-status (lambda () (apply make-worker options))))))
    `(("missing database" store-db-missing
       (#:store-database ,(db "missing.sqlite")))
      ("not SQLite" store-db-not-sqlite (#:store-database ,garbage))
      ("no ValidPaths" store-db-no-valid-paths (#:store-database ,no-table))
      ("relative database" invalid-path (#:store-database "db.sqlite"))
      ("NUL in the name" invalid-path
       (#:store-database ,(string-append good "\x00")))
      ("not a string" invalid-argument (#:store-database db))
      ("together with valid-path?" invalid-argument
       (#:store-database ,good #:valid-path? ,(const #t)))))

   (test-assert "make-worker, a missing database: the message names the file"
     (string-contains (error-message
                       (lambda ()
                         (make-worker #:store-database (db "missing.sqlite"))))
                      (db "missing.sqlite")))

   (call-with-worker
    (lambda (worker)
      (let ((registered (worker-add-goal! worker (list valid))))
        (test-equal "a registered output is already valid"
          `((finished ,registered already-valid))
          (drive-until worker (lambda () (goal-finished? registered)) 10)))
      (let ((half (worker-add-goal! worker (list written))))
        (test-equal "an output that exists but is not registered is built"
          `((run ,half))
          (drive-until worker (lambda () (eq? 'running (goal-state half))) 10))
        (worker-report! worker half 'built)
        (test-equal "…and a success reported before it is registered fails"
          'failed (goal-outcome half))
        (test-assert "…and the log says why"
          (log-mentions? (worker-log worker) written "not valid"))))
    #:store-database good #:keep-going? #t)

   (let* ((worker (make-worker #:store-database good))
          (out    (path "ccc-built"))
          (goal   (worker-add-goal! worker (list out))))
     (test-equal "run-worker: a build that writes and registers its output is built"
       `((,goal . built))
       (run-worker worker
                   (lambda (goal)
                     ;; Build in place, then register, as the daemon does.
                     (write-output out "built")
                     (register-path! good out)
                     'built)))
     (worker-close! worker))

   ;; The database turns to garbage while the builder runs.
   (let* ((file   (create-database (db "turning.sqlite") "delete" '()))
          (worker (make-worker #:store-database file))
          (out    (path "ddd-out"))
          (goal   (worker-add-goal! worker (list out))))
     (test-equal "a goal runs"
       `((run ,goal))
       (drive-until worker (lambda () (eq? 'running (goal-state goal))) 10))
     (write-output out "built")
     (register-path! file out)
     (let ((before (overwrite! file)))
       (worker-report! worker goal 'built)
       (test-equal "a success the garbled database cannot confirm is failed"
         'failed (goal-outcome goal))
       (test-assert "…and the log names the file and the error"
         (log-mentions? (worker-log worker) file "not an SQLite database"
                        "recorded as failed"))
       (restore! file before))
     (test-assert "…and the restored database answers again"
       (store-path-valid? file out))
     (worker-close! worker))

   ;;
   ;; Issue 11's case: the holder of a lock writes the output in place,
   ;; slowly; the waiting goal re-checks, sees an existing but unregistered
   ;; path and keeps waiting; it finishes once the path is registered.
   ;;

   (let* ((file   (create-database (db "inplace.sqlite") "wal" '()))
          (out    (path "eee-in-place"))
          (holder (fork-child
                   (lambda (in out-port)
                     (let ((lockset (lock-paths (list out))))
                       (child-reply out-port 'locked)
                       (match (child-read-command in)
                         ('write (write-output out "half-built")
                                 (child-reply out-port 'written)))
                       (child-read-command in)
                       (lockset-release! lockset))))))
     (child-receive holder)
     (let* ((worker (make-worker #:store-database file
                                 #:recheck-interval 0.02))
            (goal   (worker-add-goal! worker (list out))))
       (child-send holder 'write)
       (child-receive holder)
       (drive-until worker
                    (lambda ()
                      (>= (assq-ref (worker-audit worker) 'validity-rechecks)
                          5))
                    20)
       (test-equal "a re-check that sees an existing, unregistered output keeps waiting"
         '(#t waiting-lock)
         (list (file-exists? out) (goal-state goal)))
       ;; The database turns to garbage while it waits: it keeps waiting.
       (let ((before (overwrite! file))
             (n (assq-ref (worker-audit worker) 'validity-rechecks)))
         (drive-until worker
                      (lambda ()
                        (>= (assq-ref (worker-audit worker) 'validity-rechecks)
                            (+ n 3)))
                      20)
         (test-equal "a garbled database while waiting: it keeps waiting"
           'waiting-lock (goal-state goal))
         (test-assert "…and the log says why, naming the file"
           (log-mentions? (worker-log worker) file "not an SQLite database"
                          "keeps waiting"))
         (restore! file before))
       (register-path! file out)
       (test-equal "registered: the next re-check finishes it"
         `((finished ,goal already-valid))
         (drive-until worker (lambda () (goal-finished? goal)) 20))
       (worker-close! worker))
     (child-send holder 'exit)
     (child-wait holder))))

(test-end "store-db")
