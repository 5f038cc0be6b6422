;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

;;; Usage: guile tests/scheme/support/driver.scm SUITE.scm
;;;
;;; Run one SRFI-64 suite and exit with a status that reflects its results.
;;; Guile's SRFI-64 suites exit 0 even when tests fail
;;; (doc/design.md#8-notes-for-test-writers), so this driver installs its own test runner: it prints every failing
;;; test with its expected and actual values, then one line
;;;
;;;   GK-SRFI64 <suite> pass=N fail=N xpass=N xfail=N skip=N
;;;
;;; that tests/scheme.rs parses, and exits 1 on any failure or unexpected
;;; pass, 2 if the suite raised outside a test, and 3 if it never reached
;;; its final 'test-end'.

(use-modules (srfi srfi-64)
             (ice-9 format)
             (ice-9 match))

(define suite
  (match (command-line)
    ((_ suite) suite)
    ((program . _)
     (format (current-error-port) "usage: ~a SUITE.scm~%" program)
     (exit 64))))

(define final-counts #f)

(define (report-failure runner)
  (format #t "FAIL ~a: ~s~%" suite (test-runner-test-name runner))
  (for-each (lambda (key)
              (let ((value (test-result-ref runner key 'none)))
                (unless (eq? value 'none)
                  (format #t "     ~a: ~s~%" key value))))
            '(source-file source-line expected-value actual-value
              actual-error source-form)))

(define (make-gk-runner)
  (let ((runner (test-runner-null)))
    (test-runner-on-test-end! runner
      (lambda (runner)
        (match (test-result-kind runner)
          ((or 'fail 'xpass) (report-failure runner))
          (_ #t))))
    (test-runner-on-final! runner
      (lambda (runner)
        (set! final-counts
          (list (test-runner-pass-count runner)
                (test-runner-fail-count runner)
                (test-runner-xpass-count runner)
                (test-runner-xfail-count runner)
                (test-runner-skip-count runner)))))
    runner))

(test-runner-factory make-gk-runner)

(define start (get-internal-real-time))

(define aborted?
  (with-exception-handler
      (lambda (e)
        (format #t "ERROR ~a: the suite raised outside a test: ~a~%"
                suite
                (call-with-output-string
                  (lambda (port) (print-exception port #f '%exception (list e)))))
        #t)
    (lambda () (load (canonicalize-path suite)) #f)
    #:unwind? #t))

(match final-counts
  (#f
   (format #t "GK-SRFI64 ~a incomplete~%" suite)
   (exit (if aborted? 2 3)))
  ((pass fail xpass xfail skip)
   (format #t "GK-SRFI64 ~a pass=~a fail=~a xpass=~a xfail=~a skip=~a \
seconds=~,2f~%"
           suite pass fail xpass xfail skip
           (exact->inexact (/ (- (get-internal-real-time) start)
                              internal-time-units-per-second)))
   (exit (cond (aborted? 2)
               ((or (positive? fail) (positive? xpass)) 1)
               (else 0)))))
