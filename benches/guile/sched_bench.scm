;;; The scheduler through Guile, driven by benches/gk (make bench):
;;; schedule_100k_guile.
;;;
;;;   guile benches/guile/sched_bench.scm DAG-FILE
;;;
;;; DAG-FILE holds the benchmark DAG's edges as pairs of native 32-bit
;;; integers (goal, dependency), grouped by goal, as benches/gk writes them
;;; (the same graph as the C and Rust figures).  Each "sched" command on
;;; standard input runs the whole request once and answers with one line,
;;; the nanoseconds per goal: the goal specifications made (each goal's
;;; dependencies are indices into the batch), added in one
;;; 'worker-add-goals!' call, and every goal run as a no-op through
;;; 'run-worker' (which takes events and makes reports in batches), then the
;;; worker closed.  The graph's own lists (the host's data) are made once,
;;; outside the measured time.

(use-modules (goalkeeper scheduler)
             (goalkeeper supervisor)
             (ice-9 binary-ports)
             (ice-9 format)
             (ice-9 match)
             (ice-9 rdelim)
             (rnrs bytevectors))

(define edges
  (call-with-input-file (cadr (command-line)) get-bytevector-all
    #:binary #t))

(define n-goals
  ;; Goal 0 has no dependency; every other goal has at least one.
  (+ 1 (bytevector-u32-native-ref edges (- (bytevector-length edges) 8))))

(define dependencies
  ;; Goal i's dependencies, as a vector of lists of goal indices.
  (let ((deps (make-vector n-goals '())))
    (let loop ((at (- (bytevector-length edges) 8)))
      (when (>= at 0)
        (let ((goal (bytevector-u32-native-ref edges at))
              (dep  (bytevector-u32-native-ref edges (+ at 4))))
          (vector-set! deps goal (cons dep (vector-ref deps goal)))
          (loop (- at 8)))))
    deps))

(define (now-ns)
  (* (get-internal-real-time)
     (/ 1000000000 internal-time-units-per-second)))

(define (run-once)
  (let ((start (now-ns))
        (worker (make-worker)))
    (let loop ((i (- n-goals 1)) (specs '()))
      (if (>= i 0)
          (loop (- i 1)
                (cons (goal-spec '() #:kind 'plain
                                 #:dependencies (vector-ref dependencies i))
                      specs))
          (worker-add-goals! worker specs)))
    (let ((results (run-worker worker (lambda (goal) 'built))))
      (worker-close! worker)
      (unless (= (length results) n-goals)
        (error "not every goal ran" (length results)))
      (exact->inexact (/ (- (now-ns) start) n-goals)))))

(let loop ()
  (match (read-line)
    ((? eof-object?) #t)
    ("sched"
     (format #t "~,1f~%" (run-once))
     (force-output)
     (loop))
    (line
     (format #t "error: unknown command ~s~%" line)
     (force-output)
     (loop))))
