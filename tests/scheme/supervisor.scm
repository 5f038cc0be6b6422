;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-supervisor)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (ice-9 match)
  #:use-module (ice-9 rdelim)
  #:use-module (ice-9 threads)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64))

;;; Builders that die with their host (issue 19, item 2): 'spawn-builder'
;;; and 'run-worker' with real /bin/sh builders, and real host processes
;;; (tests/scheme/support/build-host.scm) sent SIGTERM, SIGKILL and SIGINT
;;; during a build.  In each case the builder is gone when the output's lock
;;; is released, and nothing is written to the output afterwards: the test
;;; takes the lock (it waits for it), notes the output's size, waits for the
;;; end of file on the pipe that every process of the build writes to (so
;;; all of them are gone), and compares.  The builders write "late-write"
;;; when they outlive what should have stopped them.

(define %store #f)

(define (path name)
  (store-path %store name))

(define %host-script
  (string-append (dirname (current-filename)) "/support/build-host.scm"))

(define (start-host script outputs . options)
  "Start build-host.scm for OUTPUTS with the builder SCRIPT; return its pid
and the port its standard output, and its builders', go to."
  (match (pipe)
    ((in . out)
     (let ((pid (spawn-builder (append (list (or (getenv "GUILE") "guile")
                                             "--no-auto-compile" %host-script
                                             script)
                                       outputs options)
                               #:output out)))
       (close-port out)
       (values pid in)))))

(define (read-until port done? timeout)
  "Read the lines of PORT until (DONE? LINES) holds for the lines read so
far, newest first; return them, or 'timeout after TIMEOUT seconds."
  (let ((deadline (+ (get-internal-real-time)
                     (* timeout internal-time-units-per-second))))
    (let loop ((lines '()))
      (if (done? lines)
          lines
          (let ((left (/ (- deadline (get-internal-real-time))
                         internal-time-units-per-second)))
            (if (<= left 0)
                'timeout
                (match (select (list port) '() '() 0
                               (max 1 (inexact->exact
                                       (round (* 1e6 (min left 1))))))
                  ((() () ()) (loop lines))
                  (_ (match (read-line port)
                       ((? eof-object?) (if (done? (cons 'eof lines))
                                            (cons 'eof lines)
                                            'timeout))
                       (line (loop (cons line lines))))))))))))

(define (builder-pids lines)
  (filter-map (lambda (line)
                (match (false-if-exception
                        (and (string? line)
                             (call-with-input-string line read)))
                  (('running pid) pid)
                  (_ #f)))
              lines))

(define (wait-for-builders port n)
  "Wait until N builders said \"started\"; return them, each as its pid and
start time (see 'running?')."
  (match (read-until port
                     (lambda (lines)
                       (and (= n (length (builder-pids lines)))
                            (= n (count (lambda (line)
                                          (equal? line "started"))
                                        lines))))
                     20)
    ('timeout '())
    (lines (map (lambda (pid) (cons pid (process-start pid)))
                (builder-pids lines)))))

(define (wait-for-eof port)
  "Read PORT to its end (every process that could write to it is gone);
return the lines, or 'timeout."
  (read-until port (lambda (lines) (and (pair? lines) (eq? 'eof (car lines))))
              20))

(define (process-stat pid)
  "The fields of /proc/PID/stat after the command, or #f if there is no
process PID."
  (match (false-if-exception
          (call-with-input-file (format #f "/proc/~a/stat" pid) read-line))
    (#f #f)
    (stat (string-tokenize (substring stat (+ 1 (string-rindex stat #\))))))))

(define (process-start pid)
  "When process PID started (clock ticks since boot), or #f if it is gone."
  (match (process-stat pid)
    (#f #f)
    (fields (list-ref fields 19))))

(define (running? process)
  "Whether PROCESS, a pid and a start time from 'wait-for-builders', still
runs: a process of that pid exists, is not a zombie, and started then.  The
start time tells a reused pid apart (pid_max is 32768 here, and the test
suites start processes by the thousand)."
  (match process
    ((pid . start)
     (match (process-stat pid)
       (#f #f)
       ((state . fields)
        (and (equal? start (list-ref fields 18))
             (not (member state '("Z" "X")))))))))

(define (gone-within? process seconds)
  "Whether PROCESS stops running within SECONDS.  A process killed by the
kernel closes its descriptors (the end of file 'wait-for-eof' sees) a moment
before it becomes a zombie, so a single look right after the end of file may
still see it run."
  (let ((end (+ (get-internal-real-time)
                (* seconds internal-time-units-per-second))))
    (let loop ()
      (cond ((not (running? process)) #t)
            ((> (get-internal-real-time) end) #f)
            (else (usleep 1000) (loop))))))

(define (file-size file)
  (if (file-exists? file) (stat:size (stat file)) 0))

(define (contents file)
  (if (file-exists? file)
      (call-with-input-file file read-string)
      ""))

(define %writer
  ;; A builder that writes its output without end, with a process of its
  ;; group that writes it later unless it is stopped; it says "started"
  ;; once both run.  The late write comes 10 s after the start, long after
  ;; the host is signalled even on a loaded machine (a host that took
  ;; longer to stop its builder would have written it while it still held
  ;; the lock), and well within 'wait-for-eof''s 20 s.
  "(sleep 10; echo late-write >> \"$1\") &
i=0; while :; do
  echo x >> \"$1\"; i=$((i + 1)); if [ $i = 100 ]; then echo started; fi
done")

(test-begin "supervisor")

(call-with-temporary-store
 (lambda (store)
   (set! %store store)

   ;;
   ;; Hosts killed during a build.
   ;;

   (let ((out (path "sigterm")))
     (call-with-values (lambda () (start-host %writer (list out)))
       (lambda (host port)
         (match (wait-for-builders port 1)
           ((builder)
            (kill host SIGTERM)
            (let* ((lockset (lock-paths (list out) #:timeout 20))
                   (size    (file-size out))
                   (alive?  (running? builder)))
              (test-assert "SIGTERM: the host's lock is released" lockset)
              (test-assert "SIGTERM: the builder was gone before its lock was \
released" (not alive?))
              (test-assert "SIGTERM: every process of the build is gone"
                (list? (wait-for-eof port)))
              (test-equal "SIGTERM: nothing written to the output after the \
release" size (file-size out))
              (test-assert "SIGTERM: the builder had written" (> size 0))
              (test-assert "SIGTERM: its group's late writer was stopped too"
                (not (string-contains (contents out) "late-write")))
              (test-equal "SIGTERM then takes its usual effect: the host \
died of it" SIGTERM (status:term-sig (cdr (waitpid host))))
              (when lockset (lockset-release! lockset))))
           (_
            (test-assert "SIGTERM: the host started its builder" #f)
            (kill host SIGKILL)
            (waitpid host))))))

   (let ((out (path "sigkill")))
     ;; The kernel kills the builder (PR_SET_PDEATHSIG); the sleep it waits
     ;; for outlives it, but the write after the sleep is the builder's.  5 s
     ;; is long enough for the test to kill the host after "started" on a
     ;; loaded machine, and short enough for 'wait-for-eof' (the orphaned
     ;; sleep holds the pipe until it ends).
     (call-with-values
         (lambda ()
           (start-host "echo started; sleep 5; echo late-write >> \"$1\""
                       (list out)))
       (lambda (host port)
         (match (wait-for-builders port 1)
           ((builder)
            (kill host SIGKILL)
            (let ((lockset (lock-paths (list out) #:timeout 20)))
              (test-assert "SIGKILL: the host's lock is released" lockset)
              (test-assert "SIGKILL: every process of the build is gone"
                (list? (wait-for-eof port)))
              (test-assert "SIGKILL: the builder was killed with its host"
                (gone-within? builder 5))
              (test-equal "SIGKILL: nothing written to the output" ""
                (contents out))
              (test-equal "SIGKILL: the host died of it" SIGKILL
                (status:term-sig (cdr (waitpid host))))
              (when lockset (lockset-release! lockset))))
           (_
            (test-assert "SIGKILL: the host started its builder" #f)
            (kill host SIGKILL)
            (waitpid host))))))

   (let ((out (path "sigint")))
     ;; The host's own SIGINT handler raises, as the REPL's does: the
     ;; exception goes through run-worker, which stops the builder first.
     (call-with-values
         (lambda () (start-host %writer (list out) "raise-on-sigint"))
       (lambda (host port)
         (match (wait-for-builders port 1)
           ((builder)
            (kill host SIGINT)
            (match (wait-for-eof port)
              ((? list? lines)
               (test-equal "SIGINT with the host's handler: it raised in \
run-worker, which released every lock"
                 '(raised user-interrupt 0)
                 (call-with-input-string (second lines) read)))
              (_ (test-assert "SIGINT: every process of the build is gone"
                   #f)))
            (let* ((lockset (lock-paths (list out) #:wait? #f))
                   (size    (file-size out)))
              (test-assert "SIGINT: the lock is free" lockset)
              (test-assert "SIGINT: the builder is gone" (not (running? builder)))
              (test-assert "SIGINT: no late write"
                (not (string-contains (contents out) "late-write")))
              (test-equal "SIGINT: the host went on after its handler"
                0 (status:exit-val (cdr (waitpid host))))
              (when lockset (lockset-release! lockset))))
           (_
            (test-assert "SIGINT: the host started its builder" #f)
            (kill host SIGKILL)
            (waitpid host))))))

   (let ((outs (list (path "thread-1") (path "thread-2"))))
     ;; Two threads, each running a worker: SIGTERM stops both.
     (call-with-values (lambda () (start-host %writer outs))
       (lambda (host port)
         (match (wait-for-builders port 2)
           ((builders ...)
            (kill host SIGTERM)
            (let* ((lockset (lock-paths outs #:timeout 20))
                   (sizes   (map file-size outs))
                   (alive   (filter running? builders)))
              (test-assert "two threads: both locks released" lockset)
              (test-equal "two threads: both builders gone before" '() alive)
              (test-assert "two threads: every process of the builds is gone"
                (list? (wait-for-eof port)))
              (test-equal "two threads: nothing written afterwards"
                sizes (map file-size outs))
              (test-equal "two threads: the host died of SIGTERM" SIGTERM
                (status:term-sig (cdr (waitpid host))))
              (when lockset (lockset-release! lockset))))
           (_
            (test-assert "two threads: the host started its builders" #f)
            (kill host SIGKILL)
            (waitpid host))))))

   ;;
   ;; spawn-builder.
   ;;

   (match (pipe)
     ((in . out)
      ;; The descriptors are listed first, while the shell has no pipe
      ;; of its own open.
      (let ((pid (spawn-builder
                  (list "/bin/sh" "-c"
                        "ls /proc/$$/fd; echo $$ $(cut -d' ' -f5 /proc/$$/stat); \
read line; echo \"stdin=$line.\"")
                  #:output out)))
        (close-port out)
        (match (read-until in (lambda (lines)
                                (and (pair? lines)
                                     (string? (car lines))
                                     (string-prefix? "stdin=" (car lines))))
                           20)
          ((stdin ids fds ...)
           (test-equal "spawn-builder: the builder leads its own process group"
             (list pid pid)
             (map string->number (string-tokenize ids)))
           (test-equal "spawn-builder: it inherits no descriptor but 0, 1 and 2"
             '("0" "1" "2")
             (reverse fds))
           (test-equal "spawn-builder: its standard input is /dev/null"
             "stdin=." stdin))
          (other (test-assert (format #f "builder output ~s" other) #f)))
        (test-equal "spawn-builder: the pid is a child of this process"
          0 (status:exit-val (cdr (waitpid pid)))))))

   (let ((pid (join-thread
               (call-with-new-thread
                (lambda () (spawn-builder '("sleep" "10")))))))
     (test-equal "spawn-builder: the builder is killed when the thread that \
started it exits (PR_SET_PDEATHSIG)"
       SIGKILL (status:term-sig (cdr (waitpid pid)))))

   (test-equal "spawn-builder: a program that cannot run is an error"
     'io (error-status (lambda () (spawn-builder '("/nonexistent/program")))))
   (test-assert "…whose message names it"
     (string-contains (error-message
                       (lambda () (spawn-builder '("/nonexistent/program"))))
                      "/nonexistent/program"))
   (for-each (match-lambda
               ((what thunk)
                (test-equal (string-append "spawn-builder: " what)
                  'invalid-argument (error-status thunk))))
             `(("an empty command" ,(lambda () (spawn-builder '())))
               ("not a list" ,(lambda () (spawn-builder "true")))
               ("not strings" ,(lambda () (spawn-builder '("echo" 1))))
               ("a NUL" ,(lambda () (spawn-builder '("echo" "a\x00b"))))
               ("a closed descriptor"
                ,(lambda () (spawn-builder '("true") #:output 1000)))
               ("a port without descriptor"
                ,(lambda () (spawn-builder '("true")
                                           #:output (open-output-string))))))

   ;;
   ;; run-worker and its builders.
   ;;

   (let* ((out    (path "leftover"))
          (worker (make-worker))
          (goal   (worker-add-goal! worker (list out))))
     ;; The builder exits 0 at once, leaving a writer in its group.
     (match (pipe)
       ((in . write-end)
        (let ((results
               (run-worker worker
                           (lambda (goal)
                             (let ((pid (spawn-builder
                                         (list "/bin/sh" "-c"
                                               "echo done > \"$1\"; \
(sleep 2; echo late-write >> \"$1\") &"
                                               "builder" out)
                                         #:output write-end)))
                               (close-port write-end)
                               pid)))))
          (test-equal "run-worker: the builder's goal is built"
            `((,goal . built)) results)
          (test-assert "run-worker: what the builder left in its group was \
stopped before the lock was released"
            (list? (wait-for-eof in)))
          (test-equal "…and wrote nothing" "done\n" (contents out)))))
     (worker-close! worker))

   (let* ((worker    (make-worker))
          (goal      (worker-add-goal! worker (list (path "dispositions"))))
          (during    #f)
          (user      (lambda (signal) #t)))
     (sigaction SIGHUP user)
     (sigaction SIGINT SIG_IGN)
     (run-worker worker
                 (lambda (goal)
                   (set! during (map (lambda (signal) (car (sigaction signal)))
                                     (list SIGTERM SIGHUP SIGINT)))
                   (call-with-output-file (path "dispositions") newline)
                   'built))
     (test-equal "run-worker: SIGTERM is caught while it runs, by a C \
handler (Guile shows #f), not a Scheme one"
       #f (first during))
     (test-equal "…a handler or SIG_IGN of the host's is left alone"
       (list user SIG_IGN) (cdr during))
     (test-equal "…and the default comes back afterwards"
       (list SIG_DFL user SIG_IGN)
       (map (lambda (signal) (car (sigaction signal)))
            (list SIGTERM SIGHUP SIGINT)))
     (sigaction SIGHUP SIG_DFL)
     (sigaction SIGINT SIG_DFL)
     (worker-close! worker))))

(test-end "supervisor")
