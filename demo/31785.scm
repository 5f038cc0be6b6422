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
;;; whose work is a short 'sleep', after which they write $out atomically.
;;; B starts once A is building and C once B is busy, as in the report.
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
;;; that did not hold).
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

;; Set by 'main': the temporary directory, the store in it, and the log
;; the builders append to.
(define %base #f)
(define %store #f)
(define %builds-log #f)

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
;;; Builders: real child processes.
;;;

(define %builder-script
  ;; $1 out, $2 name, $3 seconds of work, $4 the builds log; then inputs.
  "set -e
out=$1 name=$2 work=$3 log=$4
shift 4
echo \"building $name\"
for input in \"$@\"; do
  test -e \"$input\" || { echo \"missing input: $input\"; exit 1; }
done
sleep \"$work\"                  # the build's work
tmp=\"$out.tmp-$$\"
{ echo \"$name\"; for input in \"$@\"; do echo \"input: $input\"; done; } > \"$tmp\"
mv -f \"$tmp\" \"$out\"          # the output appears atomically
echo \"$out\" >> \"$log\"
echo \"built $out\"
")

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
         (send 'waited t (path->name (log-record-path record))
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

  (define (exited! goal status)
    ;; GOAL's builder exited; its lock is still held.
    (let* ((builder (hashq-ref builders goal))
           (code    (status:exit-val status)))
      (let loop ()                              ;the rest of its output
        (when (builder-port builder)
          (read-output! builder)
          (loop)))
      (hashq-remove! builders goal)
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
          (send 'finished (elapsed-us) name outcome))))

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

  (set! worker (make-worker #:max-jobs 1 #:legacy-hold? %legacy-hold?))
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
    (('release t name build-us code last-line)
     (hash-set! %released name t)
     (set-client-building! client #f)
     (if (eqv? code 0)
         (begin
           (hash-set! %built-by name label)
           (set-client-built! client (+ 1 (client-built client)))
           (say client t "built"
                (format #f "~a in ~,2f s; goal finished, ~a" name
                        (seconds build-us)
                        (if %legacy-hold?
                            (paint "1;31" "lock KEPT (legacy hold)")
                            "lock released"))))
         (say client t "FAILED"
              (format #f "~a: builder exited ~a: ~a" name code
                      (or last-line "no output"))
              "1;31")))
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
                  (if by (format #f " (built by ~a" by) " (")
                  (cond (handoff
                         (format #f "; hand-off ~a, waited ~,2f s)"
                                 (format-latency handoff) waited))
                        (start
                         (format #f "; waited ~,2f s)" waited))
                        (else ")"))))))
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
        '())))))

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
  (set! %builds-log (string-append %base "/builds.log"))
  (mkdir %store #o755)
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
    (format #t "  mode      ~a~%"
            (if %legacy-hold?
                (paint "1;31" "--legacy-hold: finished goals KEEP their locks, \
as the C++ daemon's did")
                "normal: a goal releases its locks when it finishes"))
    (format #t "  builders  /bin/sh: check the inputs, 'sleep' 0.1-0.5 s as \
the work, write $out, rename~%")
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
               (problems   (if (and all-done? (not %legacy-hold?))
                               (check-store)
                               '())))
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
                    (length %packages)))
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
            (loud "  FAILED: see above")
            (finish 2))))))))

(define (finish status)
  (exit status))

(main)

;;; 31785.scm ends here
