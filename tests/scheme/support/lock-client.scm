;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

;;; Usage: guile lock-client.scm hold PATH
;;;        guile lock-client.scm MODE PATH
;;;
;;; A process for tests/scheme/interrupt.scm, talking on its standard
;;; output, one datum per line.  'hold' locks PATH, says (locked), and
;;; holds it until its standard input ends.  The other modes say (waiting)
;;; and wait for PATH's lock, with a SIGINT handler that says (handler) and
;;; raises (or, in mode handler-returns, returns):
;;;
;;;   lock-paths, with-path-locks   the wait of that procedure;
;;;   run-worker                    a build goal of PATH, waiting in
;;;                                 'run-worker';
;;;   handler-returns               'lock-paths', which then goes on waiting;
;;;   timeout                       'lock-paths' with a 0.5 s timeout.
;;;
;;; At the end it says (interrupted HELD), (acquired HELD) or (timed-out
;;; HELD), HELD being the number of paths this process holds then.

(use-modules (goalkeeper)
             (ice-9 match))

(define (say . datum)
  (write datum)
  (newline)
  (force-output))

(define (wait mode path)
  (sigaction SIGINT
    (lambda (signal)
      (say 'handler)
      (unless (eq? mode 'handler-returns)
        (throw 'interrupted))))
  (say 'waiting)
  (catch 'interrupted
    (lambda ()
      (match mode
        ((or 'lock-paths 'handler-returns)
         (let ((lockset (lock-paths (list path))))
           (say 'acquired (held-path-count))
           (lockset-release! lockset)))
        ('timeout
         (unless (lock-paths (list path) #:timeout 0.5)
           (say 'timed-out (held-path-count))))
        ('with-path-locks
         (with-path-locks (list path)
           (say 'acquired (held-path-count))))
        ('run-worker
         (let ((worker (make-worker)))
           (worker-add-goal! worker (list path))
           (run-worker worker (lambda (goal) 'failed))
           (say 'acquired (held-path-count))))))
    (lambda _
      (say 'interrupted (held-path-count)))))

(match (command-line)
  ((_ "hold" path)
   (let ((lockset (lock-paths (list path))))
     (say 'locked)
     (read-char)
     (lockset-release! lockset)))
  ((_ mode path)
   (wait (string->symbol mode) path)))
