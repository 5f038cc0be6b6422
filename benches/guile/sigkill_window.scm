;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

;;; Usage: ./pre-inst-env guile benches/guile/sigkill_window.scm [RUNS]
;;;
;;; Measures what remains when a host is killed by SIGKILL during a build
;;; (doc/design.md#builders-die-with-their-host): the kernel closes the
;;; host's descriptors, which releases its locks, before it sends the
;;; builder PR_SET_PDEATHSIG.  Each run starts a host
;;; (tests/scheme/support/build-host.scm) whose builder appends to its
;;; output without end, kills the host with SIGKILL, takes the output's lock
;;; as a waiter would, and notes how many bytes the builder still wrote
;;; after that and how long after it every process of the build was gone
;;; (end of file on their pipe).  Then the same with a builder that leaves
;;; a writer in its process group, which PR_SET_PDEATHSIG does not reach.

(use-modules (goalkeeper)
             (ice-9 format)
             (ice-9 match)
             (ice-9 rdelim)
             (srfi srfi-1))

(define %host
  (string-append (dirname (dirname (dirname (current-filename))))
                 "/tests/scheme/support/build-host.scm"))

(define %writer
  "i=0; while :; do
  echo x >> \"$1\"; i=$((i + 1)); if [ $i = 100 ]; then echo started; fi
done")

(define %grandchild
  "(sleep 0.2; echo late-write >> \"$1\") & echo started; wait")

(define (now) (get-internal-real-time))
(define (size file) (if (file-exists? file) (stat:size (stat file)) 0))
(define (us t) (/ (* t 1e6) internal-time-units-per-second))

(define (run-once store script)
  "Return the bytes written after the lock was taken and the microseconds
from then to the end of the build's processes."
  (let ((out (string-append store "/out")))
    (when (file-exists? out) (delete-file out))
    (match (pipe)
      ((in . write-end)
       (let ((host (spawn-builder (list (or (getenv "GUILE") "guile")
                                        "--no-auto-compile" %host script out)
                                  #:output write-end)))
         (close-port write-end)
         (let loop ()                             ;until "started"
           (match (read-line in)
             ("started" #t)
             ((? eof-object?) (error "the host ended early"))
             (_ (loop))))
         (kill host SIGKILL)
         (let* ((lockset (lock-paths (list out) #:timeout 20))
                (taken   (now))
                (before  (size out)))
           (let drain ()
             (unless (eof-object? (read-line in)) (drain)))
           (let ((gone (now)))
             (close-port in)
             (waitpid host)
             (lockset-release! lockset)
             (values (- (size out) before) (us (- gone taken))))))))))

(define (summary what runs script store)
  (let loop ((i 0) (bytes '()) (times '()))
    (if (< i runs)
        (call-with-values (lambda () (run-once store script))
          (lambda (b t) (loop (+ i 1) (cons b bytes) (cons t times))))
        (let ((sorted (sort times <)))
          (format #t "~a: ~a runs; written after the lock was taken in ~a \
(at most ~a bytes); processes gone after min ~d / median ~d / max ~d µs~%"
                  what runs (count positive? bytes) (apply max bytes)
                  (inexact->exact (round (first sorted)))
                  (inexact->exact (round (list-ref sorted (quotient runs 2))))
                  (inexact->exact (round (last sorted))))))))

(let ((runs  (match (command-line) ((_ n) (string->number n)) (_ 50)))
      (store (mkdtemp (string-append (or (getenv "TMPDIR") "/tmp")
                                     "/gk-window-XXXXXX"))))
  (chmod store #o700)
  (summary "builder writing without end" runs %writer store)
  (summary "writer left in the builder's group" (min runs 10) %grandchild
           store)
  (for-each (lambda (f)
              (false-if-exception (delete-file (string-append store "/" f))))
            '("out" "out.lock"))
  (rmdir store))
