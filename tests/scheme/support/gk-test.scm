;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (gk-test)
  #:use-module (goalkeeper)
  #:use-module (ice-9 exceptions)
  #:use-module (ice-9 ftw)
  #:use-module (ice-9 match)
  #:use-module (ice-9 rdelim)
  #:use-module (srfi srfi-9)
  #:export (call-with-temporary-store
            store-path
            lock-file
            error-status
            error-message
            seconds-since

            fork-child
            child?
            child-pid
            child-send
            child-receive
            child-wait
            child-kill
            child-read-command
            child-reply

            fork-builder
            write-output

            read-with-timeout
            delete-file-recursively))

;;; Commentary:
;;;
;;; Helpers for the SRFI-64 suites, as (guix tests) is for Guix's: private
;;; temporary stores, error inspection, and forked children that talk to
;;; the test through pipes.  Every wait here is bounded, so a hang becomes
;;; a failing assertion rather than a stuck test run.
;;;
;;; Code:

(define (delete-file-recursively dir)
  "Delete DIR and everything under it, without following symlinks."
  (file-system-fold (const #t)
                    (lambda (file stat result) (delete-file file) result)
                    (lambda (dir stat result) result)
                    (lambda (dir stat result) (rmdir dir) result)
                    (lambda (file stat result) result)
                    (lambda (file stat errno result) result)
                    #t dir lstat))

(define (call-with-temporary-store proc)
  "Call PROC with the name of a fresh private store directory (mode 0700),
deleted afterwards."
  (let ((dir (mkdtemp (string-append (or (getenv "TMPDIR") "/tmp")
                                     "/gk-scheme-store-XXXXXX"))))
    (dynamic-wind
      (const #t)
      (lambda () (proc dir))
      (lambda () (remove-store dir)))))

(define (remove-store dir)
  "Delete DIR.  A lock file can appear in it while it is being deleted: a
library thread that waited on a lock of a goal that has since finished may
take that lock when its holder exits, after the worker was closed.  Try a
few times, then leave the directory and say what was left, as a NOTE line
that tests/scheme.rs shows, rather than fail the suite over cleanup."
  (let loop ((attempt 1))
    (unless (false-if-exception (begin (delete-file-recursively dir) #t))
      (if (< attempt 5)
          (loop (+ attempt 1))
          (format #t "NOTE could not remove ~a: still holds ~s~%"
                  dir (or (false-if-exception (scandir dir)) '()))))))

(define (store-path store name)
  (string-append store "/" name))

(define (lock-file path)
  "The lock file of store path PATH."
  (string-append path ".lock"))

(define (error-status thunk)
  "Call THUNK; return the status symbol of the &goalkeeper-error it raises,
'no-error if it returns, or (other . EXCEPTION) for any other exception."
  (with-exception-handler
      (lambda (e)
        (if (goalkeeper-error? e)
            (goalkeeper-error-status e)
            (cons 'other e)))
    (lambda () (thunk) 'no-error)
    #:unwind? #t))

(define (error-message thunk)
  "Call THUNK; return the message of the &goalkeeper-error it raises, or #f."
  (with-exception-handler
      (lambda (e)
        (and (goalkeeper-error? e) (goalkeeper-error-message e)))
    (lambda () (thunk) #f)
    #:unwind? #t))

(define (seconds-since start)
  "Seconds elapsed since START, a value of get-internal-real-time."
  (exact->inexact (/ (- (get-internal-real-time) start)
                     internal-time-units-per-second)))


;;;
;;; Forked children.
;;;

(define-record-type <child>
  (make-child pid to from)
  child?
  (pid  child-pid)
  (to   child-to)                                 ;output port to the child
  (from child-from))                              ;input port from the child

(define (read-with-timeout port timeout)
  "Read one line from PORT, an unbuffered port, and parse it as a datum.
Return 'timeout if nothing arrived within TIMEOUT seconds, the eof object at
end of file."
  ;; 'select' can return early with nothing ready (a signal such as the
  ;; SIGCHLD of another child interrupts it), so wait again for what is
  ;; left of TIMEOUT rather than report a timeout that did not happen.
  (define deadline
    (+ (get-internal-real-time)
       (* timeout internal-time-units-per-second)))
  (let loop ()
    (let ((left (/ (- deadline (get-internal-real-time))
                   internal-time-units-per-second)))
      (if (<= left 0)
          'timeout
          (match (select (list port) '() '() (inexact->exact (floor left))
                         (inexact->exact
                          (round (* 1e6 (- left (floor left))))))
            ((() () ()) (loop))
            (_ (let ((line (read-line port)))
                 (if (eof-object? line)
                     line
                     (call-with-input-string line read)))))))))

(define (fork-child proc)
  "Fork a child process that calls (PROC IN OUT), IN being a port carrying
the commands of the parent and OUT a port for its replies; the child exits
with status 0 when PROC returns, 70 if it raises (after writing
(exception \"…\") to OUT).  Return a <child>."
  (match (list (pipe) (pipe))
    (((down-in . down-out) (up-in . up-out))
     (let ((pid (primitive-fork)))
       (if (zero? pid)
           (begin
             (close-port down-out)
             (close-port up-in)
             (setvbuf up-out 'line)
             (let ((status
                    (with-exception-handler
                        (lambda (e)
                          (false-if-exception
                           (begin
                             (write (list 'exception (object->string e)) up-out)
                             (newline up-out)))
                          70)
                      (lambda () (proc down-in up-out) 0)
                      #:unwind? #t)))
               (false-if-exception (force-output up-out))
               (primitive-_exit status)))
           (begin
             (close-port down-in)
             (close-port up-out)
             (setvbuf up-in 'none)
             (setvbuf down-out 'line)
             (make-child pid down-out up-in)))))))

(define (child-send child datum)
  "Send DATUM to CHILD, which reads it with 'child-read-command'."
  (write datum (child-to child))
  (newline (child-to child))
  (force-output (child-to child)))

(define* (child-receive child #:optional (timeout 20))
  "Return the next datum CHILD replied, 'timeout, or the eof object."
  (read-with-timeout (child-from child) timeout))

(define (child-read-command in)
  "In a child: return the next command of the parent, or the eof object."
  (let ((line (read-line in)))
    (if (eof-object? line)
        line
        (call-with-input-string line read))))

(define (child-reply out datum)
  "In a child: send DATUM to the parent."
  (write datum out)
  (newline out)
  (force-output out))

(define (child-kill child)
  "Kill CHILD with SIGKILL and reap it."
  (false-if-exception (kill (child-pid child) SIGKILL))
  (child-wait child 20))

(define* (child-wait child #:optional (timeout 20))
  "Wait at most TIMEOUT seconds for CHILD to exit, and return its exit
status, or 'killed if it had to be killed.  The child's end of the reply
pipe closes when it exits, so the wait is on that pipe, not a sleep."
  (let loop ()
    (match (read-with-timeout (child-from child) timeout)
      ((? eof-object?)
       (let ((status (cdr (waitpid (child-pid child)))))
         (close-port (child-from child))
         (false-if-exception (close-port (child-to child)))
         (or (status:exit-val status)
             (list 'signal (status:term-sig status)))))
      ('timeout
       (false-if-exception (kill (child-pid child) SIGKILL))
       (waitpid (child-pid child))
       'killed)
      (_ (loop)))))                               ;a late reply: skip it

;;;
;;; Builders.
;;;

(define (fork-builder thunk)
  "Start a builder: a child process that calls THUNK and exits with status
0 if it returns true, 1 if it returns #f or raises.  Return its PID, as a
'run-worker' procedure does."
  (let ((pid (primitive-fork)))
    (if (zero? pid)
        (primitive-_exit
         (with-exception-handler (const 1)
           (lambda () (if (thunk) 0 1))
           #:unwind? #t))
        pid)))

(define (write-output file content)
  "Write CONTENT (displayed) to FILE, as a builder writes an output; return
#t."
  (call-with-output-file file
    (lambda (port) (display content port)))
  #t)

;;; gk-test.scm ends here
