;; guile examples/hello.scm /tmp/gk-store    (the store directory must exist)
(use-modules (goalkeeper))
(define store (cadr (command-line)))
(define (path name) (string-append store "/" name))

(with-path-locks (list (path "aaa-src"))           ;held for the body's extent
  (format #t "aaa-src locked by me: ~a~%" (path-locked-by-me? (path "aaa-src"))))

(call-with-worker                                   ;a scheduler, as in the daemon
 (lambda (worker)
   (let* ((lib (worker-add-goal! worker (list (path "bbb-lib"))))
          (app (worker-add-goal! worker (list (path "ccc-app")) #:dependencies (list lib))))
     (for-each (lambda (result) (format #t "~a: ~a~%" (goal-outputs (car result)) (cdr result)))
               (run-worker worker                   ;once its inputs are built and its
                           (lambda (goal)           ;output locks held; released on return
                             (call-with-output-file (car (goal-outputs goal))
                               (lambda (port) (display "built\n" port)))
                             'built))))))
