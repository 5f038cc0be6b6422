;;; goalkeeper lock benchmarks from Guile, driven by benches/gk (make bench).
;;;
;;;   guile benches/guile/lock_bench.scm STOREDIR
;;;
;;; Reads commands on standard input, one per line, and answers each with
;;; one line: the median-free mean time of one batch, in ns per operation
;;; ("cycle N": N times 'with-path-locks' on one path, ns per cycle; "set N":
;;; N times 'with-path-locks' on 100 paths, ns per path).  The harness
;;; alternates these batches with the raw C baseline's and takes medians.

(use-modules (goalkeeper locks)
             (ice-9 format)
             (ice-9 match)
             (ice-9 rdelim))

(define store (cadr (command-line)))

(define path1
  (string-append store "/0000000000000000000000000000000a-bench-1.0"))

(define paths100
  (map (lambda (k)
         (format #f "~a/~32,'0d-bench-set-~3,'0d" store k k))
       (iota 100)))

(define (now-ns)
  (* (get-internal-real-time)
     (/ 1000000000 internal-time-units-per-second)))

(define (batch n paths)
  (let ((start (now-ns)))
    (let loop ((i 0))
      (when (< i n)
        (with-path-locks paths #t)
        (loop (+ i 1))))
    (exact->inexact (/ (- (now-ns) start) (* n (length paths))))))

(let loop ()
  (match (read-line)
    ((? eof-object?) #t)
    (line
     (match (string-split line #\space)
       (("cycle" n) (format #t "~,1f~%" (batch (string->number n) (list path1))))
       (("set" n) (format #t "~,1f~%" (batch (string->number n) paths100)))
       (_ (format #t "error: unknown command ~s~%" line)))
     (force-output)
     (loop))))
