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
;;; 'make demo': Guix bug #31785 replayed on goalkeeper.  Three client
;;; processes, forked from this one, each drive their own worker with
;;; max-jobs 1 through 'run-worker' and its hooks, and build overlapping
;;; package graphs in one fresh store; B starts once A is building, C once B
;;; is busy.  A builder ('spawn-builder', /bin/sh) writes its output in place
;;; and exits; its client registers the output in the store's database (a
;;; ValidPaths table, written with the sqlite3 program) and only then
;;; reports the goal, which releases its lock.  Validity is that database
;;; (#:store-database), so a waiter's re-check sees glibc on disk but not
;;; registered ('on-disk-not-valid'); glibc's builder waits on a fifo until
;;; one did.  This process tells the story in time order, checks it, and
;;; ends with the number of locks held by finished goals: 0.  With
;;; --legacy-hold finished goals keep their locks, as in the C++ daemon; the
;;; ledger refuses the call that finished one (exit 1).  Every wait is
;;; bounded (--timeout; exit 2, as for a failed check).
;;;
;;; Code:

(use-modules (goalkeeper)
             ((goalkeeper abi) #:select (define-c-struct))
             (ice-9 exceptions)
             (ice-9 format)
             (ice-9 match)
             (ice-9 rdelim)
             (rnrs bytevectors)
             (srfi srfi-1)
             (srfi srfi-9)
             (srfi srfi-26)
             (system foreign)
             (system foreign-library))

(define %args (cdr (command-line)))
(define (flag? name) (member name %args))
(define %legacy-hold? (flag? "--legacy-hold"))
(define %timeout
  (match (filter (cut string-prefix? "--timeout=" <>) %args)
    (() 60)
    (args (string->number (string-drop (last args) 10)))))
(unless (and (real? %timeout) (positive? %timeout)
             (every (lambda (arg) (or (member arg '("--legacy-hold" "--keep"))
                                      (string-prefix? "--timeout=" arg)))
                    %args))
  (format (current-error-port) "Usage: demo/31785.scm [--legacy-hold] \
[--timeout=SECS] [--keep]~%")
  (exit 2))

;;; The scenario.

(define %packages
  ;; Name, seconds of work, inputs; in dependency order.
  '(("glibc-2.39"    0.40 ())
    ("gcc-14.2.0"    0.50 ("glibc-2.39"))
    ("bash-5.2.37"   0.30 ("glibc-2.39"))
    ("coreutils-9.5" 0.30 ("gcc-14.2.0"))
    ("pcre2-10.42"   0.20 ("gcc-14.2.0"))
    ("hello-2.12.1"  0.10 ("gcc-14.2.0" "coreutils-9.5"))
    ("grep-3.11"     0.10 ("pcre2-10.42" "bash-5.2.37"))
    ("sed-4.9"       0.10 ("coreutils-9.5" "bash-5.2.37"))))

(define %clients '(("A" . "hello-2.12.1") ("B" . "grep-3.11") ("C" . "sed-4.9")))

(define %gated "glibc-2.39")              ;half-built until a re-check saw it

(define (inputs name) (third (assoc name %packages)))

(define (closure name)
  "NAME and what it needs, in the order of %PACKAGES."
  (let loop ((todo (list name)) (seen '()))
    (match todo
      (() (filter (cut member <> seen) (map first %packages)))
      ((n . rest) (loop (append (inputs n) rest)
                        (if (member n seen) seen (cons n seen)))))))

(define (short name) (string-take name (string-rindex name #\-)))

(define %base #f)                         ;the temporary directory: store, db
(define (store-file name)
  (let ((hash (number->string (string-hash name) 32)))   ;looks like one
    (format #f "~a/store/~a-~a" %base
            (string-take (string-append hash hash hash hash) 32) name)))
(define %db-file #f)                      ;its database, as db.sqlite is to /gnu/store
(define (builds-log) (string-append %base "/builds.log"))
(define (gate-file) (string-append %base "/gate"))

;; CLOCK_MONOTONIC, shared by every process of the machine and used by the
;; library's log records: microseconds since the demo started.
(define-c-struct %timespec "struct timespec" read-timespec
  (seconds int64) (nanoseconds int64))
(define %clock-gettime
  (foreign-library-function #f "clock_gettime" #:return-type int
                            #:arg-types (list int '*)))
(define (monotonic-ns)
  (let ((ts (make-bytevector 16 0)))
    (%clock-gettime 1 (bytevector->pointer ts))
    (read-timespec ts 0 (lambda (s ns) (+ (* s 1000000000) ns)))))
(define %t0 (monotonic-ns))
(define (now) (quotient (- (monotonic-ns) %t0) 1000))
(define (record-time record) (quotient (- (log-record-time record) %t0) 1000))
(define (seconds us) (/ us 1e6))

;; The store's database, written as guix-daemon writes it, with the sqlite3
;; program; the library only reads it.
(define (sqlite sql)
  (unless (zero? (status:exit-val
                  (system* "sqlite3" "-cmd" ".timeout 60000"
                           "-cmd" ".output /dev/null" %db-file sql)))
    (error "sqlite3 failed on" %db-file)))

(define (create-database!)
  (for-each (lambda (dir) (mkdir (string-append %base dir) #o755))
            '("/store" "/var" "/var/guix" "/var/guix/db"))
  ;; The table of Guix's schema that says what is valid.
  (sqlite "create table ValidPaths (
  id integer primary key autoincrement not null, path text unique not null,
  hash text not null, registrationTime integer not null, deriver text,
  narSize integer);"))

(define (register! name hash)
  (sqlite (format #f "insert into ValidPaths (path, hash, registrationTime) \
values ('~a', '~a', ~a);" (store-file name) hash (current-time))))

;;; A client: one worker, run by run-worker.

(define %builder
  ;; $1 out, $2 name, $3 seconds of work, $4 builds log, $5 gate or -,
  ;; then the inputs.  Its last line is the hash of what it wrote.
  "set -e
out=$1 name=$2 work=$3 log=$4 gate=$5; shift 5
for input in \"$@\"; do test -d \"$input/bin\"; done
rm -rf \"$out\"; mkdir -p \"$out/share\"       # in place: exists, not valid
echo \"$name\" > \"$out/share/README\"
if [ \"$gate\" != - ]; then read -r go < \"$gate\"; fi
sleep \"$work\"
mkdir \"$out/bin\"; printf '#!/bin/sh\\necho %s\\n' \"$name\" > \"$out/bin/$name\"
echo \"$out\" >> \"$log\"
echo \"sha256:$(cat \"$out/share/README\" \"$out/bin/$name\" | sha256sum | cut -c1-64)\"")

(define (client label wanted from-demo to-demo)
  "Build WANTED as client LABEL, telling the demo on TO-DEMO; return the
exit status."
  (define (send . datum)
    (write datum to-demo) (newline to-demo) (force-output to-demo))
  (define worker #f)
  (define names (make-hash-table))                ;goal -> name
  (define builders (make-hash-table))             ;goal -> #(port line start)
  (define worst 0)                                ;locks held by finished goals
  (define (audit!)
    (set! worst (max worst (assq-ref (worker-audit worker)
                                     'locks-held-by-finished))))

  (define (log! record)                           ;#:on-log
    (let ((name (hashq-ref names (log-record-goal record)))
          (t    (record-time record)))
      (match (log-record-kind record)
        ((or 'waits-foreign 'waits-local)
         (send 'wait t name (log-record-holder-pid record)))
        ('became-valid (send 'noticed t name (log-record-duration record)))
        ('on-disk-not-valid (send 'recheck t name))
        (_ #t))
      (audit!)))

  (define (run! goal)                             ;its locks are held
    (let ((name (hashq-ref names goal)))
      (match (pipe)
        ((in . out)
         (let ((pid (spawn-builder
                     (cons* "/bin/sh" "-c" %builder "builder" (store-file name)
                            name (number->string (second (assoc name %packages)))
                            (builds-log)
                            (if (string=? name %gated) (gate-file) "-")
                            (map store-file (inputs name)))
                     #:output out #:error out)))
           (close-port out)
           (hashq-set! builders goal (vector in #f (now)))
           (send 'run (now) name pid)
           (audit!)
           pid)))))

  (define (read-output! goal)                     ;#:watch, a builder's pipe
    (let* ((b (hashq-ref builders goal)) (line (read-line (vector-ref b 0))))
      (if (eof-object? line)
          (begin (close-port (vector-ref b 0)) (vector-set! b 0 #f))
          (vector-set! b 1 line))))

  (define (exited! goal status)                   ;#:on-exit; locks still held
    (let ((b (hashq-ref builders goal)) (name (hashq-ref names goal))
          (ok? (eqv? 0 (status:exit-val status))))
      (while (vector-ref b 0) (read-output! goal))
      (when ok?
        ;; Told before the commit: nobody finds it valid before this.
        (send 'built (now) name (- (now) (vector-ref b 2)))
        (register! name (vector-ref b 1)))
      (send 'release (now) name ok? (vector-ref b 1))
      (if ok? 'built 'failed)))

  (define (finished! goal outcome)                ;#:on-finished; no lock held
    (audit!)
    (send 'finished (now) (hashq-ref names goal) outcome))

  (define (watched)                               ;#:watch, before each wait
    (cons (cons from-demo (lambda (port)
                            (when (eof-object? (read-line port))
                              (error "the demo went away"))))
          (hash-fold (lambda (goal b watched)
                       (if (vector-ref b 0)
                           (acons (vector-ref b 0) (lambda _ (read-output! goal))
                                  watched)
                           watched))
                     '() builders)))

  (unless (equal? "go" (read-line from-demo))
    (primitive-_exit 4))
  (set! worker (make-worker #:max-jobs 1 #:legacy-hold? %legacy-hold?
                            #:recheck-interval 0.2
                            #:store-database %db-file))
  (fold (lambda (name goals)
          (let ((goal (worker-add-goal! worker (list (store-file name))
                                        #:dependencies
                                        (map (cut assoc-ref goals <>)
                                             (inputs name)))))
            (hashq-set! names goal name)
            (acons name goal goals)))
        '() (closure wanted))
  (send 'started (now) (length (closure wanted)))
  (match (with-exception-handler identity
           (lambda ()
             (run-worker worker run! #:on-exit exited! #:on-finished finished!
                         #:on-log log! #:watch watched))
           #:unwind? #t)
    ((? list?) (audit!) (send 'done (now) worst) 0)
    ((and (? goalkeeper-error? e)
          (= goalkeeper-error-status 'invariant-violation))
     (false-if-exception (audit!))
     (send 'violation (now) (exception-origin e) (goalkeeper-error-message e)
           worst)
     3)
    (e (send 'error (now) (if (goalkeeper-error? e)
                              (goalkeeper-error-message e)
                              (object->string e)))
       4)))

;;; This process: starts the clients and tells the story.

(define-record-type <client>
  (make-client label wanted pid up down state)
  client?
  (label client-label) (wanted client-wanted) (pid client-pid)
  (up client-up) (down client-down)
  (state client-state set-client-state!))        ;#f, go, busy, done, ...

(define (spawn-client label wanted)
  (match (list (pipe) (pipe))
    (((up-in . up-out) (down-in . down-out))
     (force-output)
     (let ((pid (primitive-fork)))
       (when (zero? pid)
         (primitive-_exit
          (catch #t
            (lambda ()
              (for-each close-port (cons* up-in down-out
                                          (append-map (lambda (c)
                                                        (list (client-up c)
                                                              (client-down c)))
                                                      %clients*)))
              (client label wanted down-in up-out))
            (const 4))))
       (close-port up-out)
       (close-port down-in)
       (make-client label wanted pid up-in down-out #f)))))

(define %clients* '())
(define %counts (make-hash-table))       ;(label . what) -> n
(define %registered (make-hash-table))   ;name -> µs
(define %released (make-hash-table))     ;name -> µs
(define %built-by (make-hash-table))     ;name -> label
(define %waits (make-hash-table))        ;(label . name) -> µs it began
(define %noticed (make-hash-table))      ;(label . name) -> (µs . seconds)
(define %found-valid '())                ;(label name µs)
(define %rechecks '())                   ;(label name µs)
(define %handoffs '())                   ;µs
(define %gate #f)                        ;the gate, open for writing

(define (counted label what) (hash-ref %counts (cons label what) 0))
(define (count! label what n)
  (hash-set! %counts (cons label what) (+ n (counted label what))))
(define (total what)
  (reduce + 0 (map (lambda (c) (counted (client-label c) what)) %clients*)))

(define (say who t verb fmt . args)
  (format #t "  ~7,3f  ~a  ~8a ~?~%" (seconds t) who verb fmt args))

(define (who-is pid)
  (match (find (lambda (c) (eqv? pid (client-pid c))) %clients*)
    (#f (format #f "pid ~a" pid))
    (c (format #f "pid ~a = client ~a" pid (client-label c)))))

(define (handle! c message)
  (define label (client-label c))
  (define (failed! t fmt . args) (apply say label t "FAILED" fmt args))
  (match message
    (('started t goals)
     (count! label 'goals goals)
     (say label t "start" "pid ~a: guix build ~a  (~a goals, max-jobs 1)"
          (client-pid c) (client-wanted c) goals))
    (('run t name pid)
     (set-client-state! c 'busy)
     (say label t "build" "~a (builder pid ~a)" name pid))
    (('wait t name pid)
     (set-client-state! c 'busy)
     (count! label 'waits 1)
     (hash-set! %waits (cons label name) t)
     (say label t "wait" "~a: lock held by ~a; waiting, holding no lock" name
          (who-is pid)))
    (('noticed t name waited)
     (hash-set! %noticed (cons label name) (cons t waited)))
    (('recheck t name)
     (set! %rechecks (cons (list label name t) %rechecks))
     (say label t "re-check" "~a exists on disk but is not registered in \
db.sqlite: still being built, keep waiting" name)
     (when (string=? name %gated)
       (display "go\n" %gate)
       (force-output %gate)))
    (('built t name us)
     (hash-set! %registered name t)
     (hash-set! %built-by name label)
     (count! label 'built 1)
     (say label t "built" "~a in ~,2f s, registered in db.sqlite; goal \
finished, ~a" name (seconds us)
          (if %legacy-hold? "lock KEPT (legacy hold)" "lock released")))
    (('release t name ok? last)
     (hash-set! %released name t)
     (unless ok? (failed! t "~a: builder failed: ~a" name last)))
    (('finished t name 'already-valid)
     (set-client-state! c 'busy)
     (let* ((start    (hash-ref %waits (cons label name)))
            (noticed  (hash-ref %noticed (cons label name)))
            (t        (if noticed (car noticed) t))
            (released (hash-ref %released name))
            (handoff  (and start released (>= released start)
                           (- t released)))
            (by       (hash-ref %built-by name)))
       (count! label 'valid 1)
       (set! %found-valid (cons (list label name t) %found-valid))
       (when handoff (set! %handoffs (cons handoff %handoffs)))
       (say label t "valid" "~a: already valid, ~a~@[ (built by ~a~]~a" name
            (cond (handoff "lock released") (start "noticed while waiting")
                  (else "no lock taken"))
            by
            (cond ((not by) "")
                  (handoff (format #f "; hand-off ~,2f ms, waited ~,2f s)"
                                   (/ handoff 1000.) (if noticed (cdr noticed) 0)))
                  (else ")")))))
    (('finished t name 'built) #t)
    (('finished t name outcome) (failed! t "~a: ~a" name outcome))
    (('done t worst)
     (set-client-state! c 'done)
     (count! label 'held worst)
     (say label t "done" "all goals finished; audit: ~a locks held by finished \
goals" worst))
    (('violation t origin text worst)
     (set-client-state! c 'violation)
     (count! label 'held (max worst 1))
     (count! label 'violations 1)
     (say label t "VIOLATION" "~a raised &goalkeeper-error 'invariant-violation:"
          origin)
     (say label t "" text)
     (say label t "" "audit: ~a lock(s) held by finished goals; ~a stops"
          (max worst 1) label)
     (hash-for-each (lambda (key start)     ;who waits for a lock it keeps
                      (when (and (not (equal? (car key) label))
                                 (equal? label (hash-ref %built-by (cdr key))))
                        (say " " t "" "meanwhile ~a waits for ~a, whose lock \
~a's finished goal keeps: where guix-daemon deadlocked" (car key) (cdr key)
                             label)))
                    %waits))
    (('error t text)
     (set-client-state! c 'error)
     (say label t "ERROR" "~a" text))))

(define (start-next!)
  "Tell the next client to go once every client before it is busy."
  (let loop ((clients %clients*))
    (match clients
      (() #t)
      ((c . rest)
       (case (client-state c)
         ((#f) (set-client-state! c 'go)
          (display "go\n" (client-down c))
          (force-output (client-down c)))
         ((go) #t)
         (else (loop rest)))))))

(define (message-time datum)
  (match datum ((_ (? number? t) . _) t) (_ 0)))

(define (run-clients deadline)
  "Tell what the clients say, in time order, until each has closed its
pipe; return 'finished or 'timeout."
  (define (ready open timeout)
    (let ((us (max 0 timeout)))
      (first (select (map client-up open) '() '() (quotient us 1000000)
                     (remainder us 1000000)))))
  (let loop ((open %clients*))
    (cond
     ((null? open) 'finished)
     ((null? (ready open (- deadline (now)))) 'timeout)
     (else
      ;; Everything available now, so that a hand-off is told after the
      ;; release it followed.
      (let drain ((lines '()) (open open))
        (match (filter (lambda (c) (memq (client-up c) (ready open 0))) open)
          (()
           (for-each (match-lambda ((c . datum) (handle! c datum)))
                     (sort (map (match-lambda
                                  ((c . line)
                                   (cons c (call-with-input-string line read))))
                                lines)
                           (lambda (a b) (< (message-time (cdr a))
                                            (message-time (cdr b))))))
           (start-next!)
           (loop open))
          (clients
           (let ((got (map (lambda (c) (cons c (read-line (client-up c))))
                           clients)))
             (drain (append (filter (compose string? cdr) got) lines)
                    (remove (lambda (c) (eof-object? (assq-ref got c)))
                            open))))))))))

(define (problems)
  "What a finished run must show, as a list of what it does not."
  (let ((log (string-tokenize (call-with-input-file (builds-log) read-string)))
        (outputs (map first %packages)))
    (append
     (filter-map (lambda (name)
                   (let ((n (count (cut string=? (store-file name) <>) log)))
                     (and (not (= n 1))
                          (format #f "~a was built ~a times" name n))))
                 outputs)
     (filter-map (lambda (name)
                   (and (not (store-path-valid? %db-file (store-file name)))
                        (format #f "~a is not registered in db.sqlite" name)))
                 outputs)
     (match (lock-paths (map store-file outputs) #:wait? #f)
       (#f '("a lock is still held after every client exited"))
       (lockset (lockset-delete-on-release! lockset)
                (lockset-release! lockset)
                '()))
     (if (any (lambda (r) (string=? %gated (second r))) %rechecks)
         '()
         (list (format #f "no re-check saw ~a on disk but not registered"
                       %gated))))))

(define (found-before-registration)
  (filter-map (match-lambda
                ((label name t)
                 (let ((registered (hash-ref %registered name)))
                   (and (or (not registered) (< t registered))
                        (format #f "~a found ~a valid at ~,3f s, before it was \
registered" label name (seconds t))))))
              %found-valid))

(define (report outcome)
  "Print the end of the story; return the exit status."
  (define (row . cells)
    (apply format #t "  ~6a ~14a ~5@a ~6@a ~12@a ~11@a  ~a~%" cells))
  (when (eq? outcome 'timeout)
    (format #t "~%TIMEOUT: the clients did not finish within ~a s~%" %timeout))
  (newline)
  (row "client" "asked for" "goals" "built" "found valid" "lock waits" "result")
  (for-each (lambda (c)
              (apply row (client-label c) (client-wanted c)
                     (append (map (cut counted (client-label c) <>)
                                  '(goals built valid waits))
                             (list (match (client-state c)
                                     ('done "ok")
                                     ('violation "INVARIANT VIOLATION")
                                     ((or 'busy 'go #f) "killed (timeout)")
                                     (other other))))))
            %clients*)
  (apply row "all" "" (append (map total '(goals built valid waits)) '("")))
  (newline)
  (let* ((held      (total 'held))
         (all-done? (every (lambda (c) (eq? 'done (client-state c))) %clients*))
         (problems  (append (if (and all-done? (not %legacy-hold?)) (problems) '())
                            (found-before-registration))))
    (unless (null? %handoffs)
      (format #t "  hand-offs   ~a locks passed between clients: release -> \
waiter's event ~,2f ms median, ~,2f ms max~%              (guix-daemon retries \
a busy lock every 5 s: 2.5 s median)~%" (length %handoffs)
              (/ (list-ref (sort %handoffs <) (quotient (length %handoffs) 2))
                 1000.)
              (/ (apply max %handoffs) 1000.)))
    (when (and all-done? (null? problems) (not %legacy-hold?))
      (format #t "  outputs     ~a distinct, each built exactly once (the \
builders' log); every lock is free
  database    ~a paths in ValidPaths, each registered before any client found \
it valid
              ~a re-check(s) found an output on disk but not registered: the \
waiter kept waiting~%" (length %packages) (length %packages) (length %rechecks)))
    (for-each (cut format #t "  PROBLEM: ~a~%" <>) problems)
    (format #t "  ledger      ~a violation(s) reported by the workers' invariant \
checks~%" (total 'violations))
    (cond ((and all-done? (null? problems) (zero? held) (not %legacy-hold?))
           (format #t "  0 locks held by finished goals~%")
           0)
          ((positive? held)
           (format #t "~%  !!! INVARIANT VIOLATION: ~a lock(s) held by finished \
goals~%  !!! A finished goal kept its output locks (Guix bug #31785); the \
workers' ledger~%  !!! refused the call that finished it, and the clients \
stopped instead of deadlocking.~%  ~a locks held by finished goals~%"
                   held held)
           1)
          (else (format #t "  FAILED: see above~%") 2))))

(define (stop-clients!)
  "SIGTERM to the clients, on which their run-worker stops and reaps their
builders; SIGKILL to one whose pipe did not close within 2 s."
  (for-each (lambda (c) (false-if-exception (kill (client-pid c) SIGTERM)))
            %clients*)
  (for-each (lambda (c)
              (let loop ()
                (if (pair? (first (select (list (client-up c)) '() '() 2)))
                    (unless (eof-object? (read-line (client-up c))) (loop))
                    (false-if-exception (kill (client-pid c) SIGKILL)))))
            %clients*))

(define (main)
  (setvbuf (current-output-port) 'line)
  (set! %base (mkdtemp (string-append (or (getenv "TMPDIR") "/tmp")
                                      "/gk-demo-XXXXXX")))
  (set! %db-file (string-append %base "/var/guix/db/db.sqlite"))
  (exit
   (dynamic-wind
     (const #t)
     (lambda ()
       (create-database!)
       (mknod (gate-file) 'fifo #o600 0)
       (format #t "goalkeeper demo: Guix bug #31785, replayed
  Three clients build overlapping package graphs in one store, each with
  max-jobs 1.  In guix-daemon a goal kept its output locks until the goal
  object died, long after it finished, so such clients waited on each other
  for ever.  Here a goal's locks go the moment it finishes.

  library   ~a (goalkeeper ~a)
  store     ~a/store  (fresh; OFD locks on PATH.lock)
  database  ~a  (ValidPaths; validity is registration, re-checked every 0.2 s)
  mode      ~a
  builders  /bin/sh: write $out in place, work 0.1-0.5 s, exit; the client then
            registers $out in db.sqlite and only then releases its lock;
            glibc's builder waits, half-built, until a waiter's re-check saw it~%"
               (goalkeeper-library-file) (goalkeeper-version) %base %db-file
               (if %legacy-hold?
                   "--legacy-hold: finished goals KEEP their locks, as the C++ \
daemon's did"
                   "normal: a goal releases its locks when it finishes"))
       (for-each (match-lambda              ;the clients wait for "go"
                   ((label . wanted)
                    (format #t "  client ~a  guix build ~14a needs ~a~%" label
                            wanted (string-join (map short (closure wanted))))
                    (set! %clients* (append %clients*
                                            (list (spawn-client label wanted))))))
                 %clients)
       (format #t "  B starts once A is building, C once B is busy; every wait \
is bounded (~a s)~%~%     time  who  what~%" %timeout)
       (set! %gate (fdes->outport (open-fdes (gate-file)
                                             (logior O_RDWR O_CLOEXEC))))
       (for-each (lambda (signal)
                   (sigaction signal (lambda _ (stop-clients!) (exit 130))))
                 (list SIGINT SIGTERM SIGHUP))
       (start-next!)
       (let ((outcome (run-clients (+ (now) (inexact->exact
                                             (round (* 1e6 %timeout)))))))
         (stop-clients!)
         (for-each (compose waitpid client-pid) %clients*)
         (report outcome)))
     (lambda ()
       (if (flag? "--keep")
           (format #t "  kept: ~a~%" %base)
           (system* "rm" "-rf" %base))))))

(main)

;;; 31785.scm ends here
