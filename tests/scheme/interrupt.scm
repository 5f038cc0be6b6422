;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-interrupt)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (ice-9 match)
  #:use-module (ice-9 rdelim)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64))

;;; Interruptible waits (issue 19, item 1): a real SIGINT sent to a Guile
;;; process blocked on a lock that another process holds
;;; (tests/scheme/support/lock-client.scm) runs the process's handler and,
;;; when the handler raises, ends the wait holding nothing; the REPL's
;;; Ctrl-C does the same.  The signal is sent once the kernel shows the
;;; waiter's lock request blocked (/proc/locks), so that it arrives during
;;; the wait: a wait blocked in the library, as before, never ran the
;;; handler.

(define %client
  (string-append (dirname (current-filename)) "/support/lock-client.scm"))

(define %guile (or (getenv "GUILE") "guile"))

(define (start command)
  "Start COMMAND with pipes on its standard input and output; return its
pid, the port to read what it says and the port to write to it."
  (match (list (pipe) (pipe))
    (((down-in . down-out) (up-in . up-out))
     (let ((pid (spawn-builder command #:input down-in #:output up-out)))
       (close-port down-in)
       (close-port up-out)
       (setvbuf up-in 'none)
       (values pid up-in down-out)))))

(define (client . arguments)
  (start (append (list %guile "--no-auto-compile" %client) arguments)))

(define (blocked-on? file)
  "Whether the kernel shows a lock request blocked on FILE."
  (let ((inode (format #f ":~a " (stat:ino (stat file)))))
    (any (lambda (line)
           (and (string-contains line "->") (string-contains line inode)))
         (string-split (call-with-input-file "/proc/locks" read-string)
                       #\newline))))

(define (wait-until-blocked file)
  "Wait, at most 10 s, until a lock request on FILE is blocked in the
kernel; return #f if none was."
  (let loop ((n 0))
    (cond ((blocked-on? file) #t)
          ((= n 5000) #f)
          (else (usleep 2000) (loop (+ n 1))))))

(define (read-text port timeout)
  "Return what PORT, an unbuffered port, gives until its end, or #f if that
takes more than TIMEOUT seconds."
  (define deadline
    (+ (get-internal-real-time) (* timeout internal-time-units-per-second)))
  (let loop ((chars '()))
    (let ((left (/ (- deadline (get-internal-real-time))
                   internal-time-units-per-second)))
      (if (<= left 0)
          #f
          (match (select (list port) '() '() 0
                         (max 1 (inexact->exact (round (* 1e6 (min left 1))))))
            ((() () ()) (loop chars))
            (_ (match (read-char port)
                 ((? eof-object?) (list->string (reverse chars)))
                 (char (loop (cons char chars))))))))))

(define* (stop! pid output #:optional input)
  "Close INPUT, PID's standard input, wait (at most 10 s) for the end of
OUTPUT, the pipe it writes to, and return its exit status, or 'killed if it
had to be killed."
  (when input (close-port input))
  (unless (read-text output 10)
    (kill pid SIGKILL))
  (close-port output)
  (match (waitpid pid)
    ((_ . status) (or (status:exit-val status) 'killed))))

(define (seconds-between start end)
  (exact->inexact (/ (- end start) internal-time-units-per-second)))

(test-begin "interrupt")

(call-with-temporary-store
 (lambda (store)
   (define path (store-path store "hello"))

   (call-with-values (lambda () (client "hold" path))
     (lambda (holder holder-says holder-stdin)
       (test-equal "the holder process locked the path"
         '(locked) (read-with-timeout holder-says 20))

       (for-each
        (lambda (mode)
          (call-with-values (lambda () (client mode path))
            (lambda (waiter says stdin)
              (test-equal (format #f "~a: the waiter waits" mode)
                '(waiting) (read-with-timeout says 20))
              (test-assert (format #f "~a: its request is blocked" mode)
                (wait-until-blocked (lock-file path)))
              (let ((start (get-internal-real-time)))
                (kill waiter SIGINT)
                (test-equal (format #f "~a: SIGINT runs the handler" mode)
                  '(handler) (read-with-timeout says 10))
                (let ((end (read-with-timeout says 10)))
                  (test-equal (format #f "~a: …whose exception ends the \
wait, holding nothing" mode)
                    '(interrupted 0) end)
                  (when (equal? end '(interrupted 0))
                    (format #t "NOTE ~a: SIGINT ended the wait in ~,1f ms~%"
                            mode (* 1000 (seconds-between
                                          start (get-internal-real-time)))))))
              (test-equal (format #f "~a: the waiter exits" mode)
                0 (stop! waiter says stdin)))))
        '("lock-paths" "with-path-locks" "run-worker"))

       (call-with-values (lambda () (client "handler-returns" path))
         (lambda (waiter says stdin)
           (read-with-timeout says 20)
           (test-assert "a handler that returns: the request is blocked"
             (wait-until-blocked (lock-file path)))
           (kill waiter SIGINT)
           (test-equal "…SIGINT runs it"
             '(handler) (read-with-timeout says 10))
           (test-assert "…and the wait goes on"
             (wait-until-blocked (lock-file path)))
           (close-port holder-stdin)              ;the holder releases
           (test-equal "…until the lock is released: then it is acquired"
             '(acquired 1) (read-with-timeout says 20))
           (test-equal "the holder released and exited"
             0 (stop! holder holder-says))
           (test-equal "the waiter exits" 0 (stop! waiter says stdin))))

       (call-with-values (lambda () (client "hold" path))
         (lambda (holder says stdin)
           (read-with-timeout says 20)
           (call-with-values (lambda () (client "timeout" path))
             (lambda (waiter waiter-says waiter-stdin)
               (read-with-timeout waiter-says 20)
               (test-equal "a timeout still works: #f, holding nothing"
                 '(timed-out 0) (read-with-timeout waiter-says 20))
               (stop! waiter waiter-says waiter-stdin)))

           ;; The REPL: its Ctrl-C handler raises "User interrupt".
           (call-with-values
               (lambda () (start (list %guile "--no-auto-compile" "-q")))
             (lambda (repl output input)
               (format input "(use-modules (goalkeeper))~%\
(begin (display \"(waiting)\\n\") (lock-paths (list ~s)))~%" path)
               (force-output input)
               (test-assert "REPL: lock-paths waits"
                 (wait-until-blocked (lock-file path)))
               (kill repl SIGINT)
               (format input "(format #t \"~~%(held ~~a)~~%\" \
(held-path-count))~%")
               (force-output input)
               (close-port input)
               (let ((text (or (read-text output 20)
                               (begin (kill repl SIGKILL) ""))))
                 (test-assert "REPL: Ctrl-C ends the wait with \"User \
interrupt\""
                   (string-contains text "User interrupt"))
                 (test-assert "REPL: …and the process holds nothing"
                   (string-contains text "(held 0)")))
               (test-equal "REPL: it exits at the end of its input"
                 0 (match (waitpid repl)
                     ((_ . status) (status:exit-val status))))))
           (test-equal "the second holder exits"
             0 (stop! holder says stdin))))))))

(test-end "interrupt")
