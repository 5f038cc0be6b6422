;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-locks)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (ice-9 control)
  #:use-module (ice-9 exceptions)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64))

;;; The lock API: lock sets, with-path-locks, exclusion between Guile
;;; processes, timeouts, and bad inputs.

(define %store #f)

(define (path name)
  (store-path %store name))

(define (nothing-held?)
  (and (zero? (held-path-count)) (null? (held-paths))))

(define (lock-in-child path . options)
  "Fork a child that locks PATH (with OPTIONS for lock-paths), replies
'locked or 'busy, and then obeys 'release and 'exit commands."
  (fork-child
   (lambda (in out)
     (let ((lockset (apply lock-paths (list path) options)))
       (child-reply out (if lockset 'locked 'busy))
       (let loop ()
         (match (child-read-command in)
           ('release
            (when lockset (lockset-release! lockset))
            (child-reply out 'released)
            (loop))
           ((or 'exit (? eof-object?)) #t)))))))

(test-begin "locks")

(call-with-temporary-store
 (lambda (store)
   (set! %store store)

   ;;
   ;; Lock sets.
   ;;

   (let ((lockset (lock-paths (list (path "b") (path "a") (path "a")))))
     (test-assert "lock-paths returns a lock set"
       (lockset? lockset))

     (test-equal "lock set paths are sorted and deduplicated"
       (list (path "a") (path "b"))
       (lockset-paths lockset))

     (test-assert "each path is locked by this process"
       (every path-locked-by-me? (list (path "a") (path "b"))))

     (test-assert "an unrelated path is not locked by this process"
       (not (path-locked-by-me? (path "c"))))

     (test-equal "held-paths lists exactly the locked paths"
       (list (path "a") (path "b"))
       (held-paths))

     (test-equal "held-path-count counts them"
       2
       (held-path-count))

     (test-assert "the lock files are siblings named P.lock"
       (and (file-exists? (lock-file (path "a")))
            (file-exists? (lock-file (path "b")))))

     (test-assert "lockset-check passes on a held lock set"
       (lockset-check lockset))

     (test-assert "a held lock set is not released"
       (not (lockset-released? lockset)))

     (lockset-release! lockset)

     (test-assert "after release, the lock set is released"
       (lockset-released? lockset))

     (test-assert "after release, nothing is held"
       (and (nothing-held?) (not (path-locked-by-me? (path "a")))))

     (test-equal "release is idempotent"
       'no-error
       (error-status (lambda () (lockset-release! lockset))))

     (test-assert "release without deletion leaves the lock file"
       (file-exists? (lock-file (path "a"))))

     (test-equal "a released lock set still knows its paths"
       (list (path "a") (path "b"))
       (lockset-paths lockset)))

   (let ((lockset (lock-paths (list (path "d")))))
     (lockset-delete-on-release! lockset)
     (lockset-release! lockset)
     (test-assert "lockset-delete-on-release! deletes the lock file"
       (not (file-exists? (lock-file (path "d"))))))

   (let ((lockset (lock-paths (list (path "e")))))
     (lockset-delete-on-release! lockset #t)
     (lockset-delete-on-release! lockset #f)
     (lockset-release! lockset)
     (test-assert "deletion can be asked for and taken back"
       (file-exists? (lock-file (path "e")))))

   (let ((lockset (lock-paths (list (path "f")) #:backend 'flock)))
     (test-equal "the flock backend is recorded"
       'flock
       (lockset-backend lockset))
     (test-assert "the flock backend locks too"
       (path-locked-by-me? (path "f")))
     (lockset-release! lockset))

   ;;
   ;; Held by this process (G5): reported, never granted twice, never a
   ;; self-block.
   ;;

   (let ((lockset (lock-paths (list (path "a")))))
     (test-equal "locking a path this process holds raises held-by-this-process"
       'held-by-this-process
       (error-status (lambda () (lock-paths (list (path "a"))))))

     (test-equal "so does a try (#:wait? #f): it is an error, not contention"
       'held-by-this-process
       (error-status (lambda ()
                       (lock-paths (list (path "a")) #:wait? #f))))

     (test-assert "the message names the path"
       (string-contains (error-message
                         (lambda () (lock-paths (list (path "a")))))
                        (path "a")))

     (test-equal "an overlapping set takes nothing more (all or nothing)"
       '(held-by-this-process #f 1)
       (list (error-status (lambda ()
                             (lock-paths (list (path "z") (path "a")))))
             (path-locked-by-me? (path "z"))
             (held-path-count)))
     (lockset-release! lockset))

   ;;
   ;; with-path-locks.
   ;;

   (test-equal "with-path-locks holds the locks in its body and returns its values"
     '(#t #t 1 2)
     (call-with-values
         (lambda ()
           (with-path-locks (list (path "a") (path "b"))
             (values (path-locked-by-me? (path "a"))
                     (path-locked-by-me? (path "b"))
                     1 2)))
       list))

   (test-assert "with-path-locks releases on normal return"
     (nothing-held?))

   (let* ((condition (make-exception-with-message "boom"))
          (caught (with-exception-handler
                      (lambda (e) e)
                    (lambda ()
                      (with-path-locks (list (path "a"))
                        (raise-exception condition)))
                    #:unwind? #t)))
     (test-assert "with-path-locks lets the exception through unchanged"
       (eq? caught condition))
     (test-assert "with-path-locks releases on raise"
       (nothing-held?)))

   (let* ((tag (make-prompt-tag "test"))
          (inside (call-with-prompt tag
                    (lambda ()
                      (with-path-locks (list (path "a") (path "b"))
                        (abort-to-prompt tag (held-path-count))))
                    (lambda (k count) count))))
     (test-equal "the body held both locks before aborting"
       2 inside)
     (test-assert "with-path-locks releases on abort-to-prompt"
       (nothing-held?)))

   (let ((escaped (let/ec return
                    (with-path-locks (list (path "a"))
                      (return (path-locked-by-me? (path "a")))))))
     (test-assert "with-path-locks releases when an escape continuation is used"
       (and escaped (nothing-held?))))

   (test-equal "nested with-path-locks on disjoint paths"
     '(2 1)
     (with-path-locks (list (path "a"))
       (let ((inner (with-path-locks (list (path "b"))
                      (held-path-count))))
         (list inner (held-path-count)))))

   (test-equal "nested with-path-locks on the same path raises, the outer lock stays"
     '(held-by-this-process #t)
     (with-path-locks (list (path "a"))
       (list (error-status (lambda ()
                             (with-path-locks (list (path "a")) 'never)))
             (path-locked-by-me? (path "a")))))

   (let* ((tag (make-prompt-tag "re-enter"))
          (entries 0)
          (k (call-with-prompt tag
               (lambda ()
                 (with-path-locks (list (path "r"))
                   (abort-to-prompt tag)
                   (set! entries (+ entries 1))
                   (held-path-count)))
               (lambda (k) k)))
          (left (nothing-held?))
          ;; Re-enter the body through its (delimited) continuation.
          (inside (k)))
     (test-equal "with-path-locks takes the locks again when its body is re-entered"
       '(#t 1 1 #t)
       (list left entries inside (nothing-held?))))

   (test-equal "a bad backend raises, and the next lock works"
     '(invalid-argument #t)
     (list (error-status (lambda ()
                           (call-with-path-locks (list (path "s")) (const #t)
                                                 #:backend 'nope)))
           (with-path-locks (list (path "s")) (path-locked-by-me? (path "s")))))

   (test-equal "so does a bad path after a good one"
     '(invalid-path #t)
     (list (error-status (lambda ()
                           (call-with-path-locks (list (path "s") "relative")
                                                 (const #t))))
           (with-path-locks (list (path "s")) (path-locked-by-me? (path "s")))))

   (call-with-path-locks (list (path "g")) (const #t)
                         #:delete-on-success? #t)
   (test-assert "call-with-path-locks #:delete-on-success? deletes on return"
     (not (file-exists? (lock-file (path "g")))))

   (error-status (lambda ()
                   (call-with-path-locks (list (path "h"))
                     (lambda () (raise-exception 'failed))
                     #:delete-on-success? #t)))
   (test-assert "…but keeps the lock file when the body raises"
     (and (file-exists? (lock-file (path "h"))) (nothing-held?)))

   ;;
   ;; Bad inputs raise &goalkeeper-error, with a status symbol.
   ;;

   (test-equal "a relative path is an invalid path"
     'invalid-path
     (error-status (lambda () (lock-paths (list "relative/path")))))

   (test-equal "a path with a .. component is an invalid path"
     'invalid-path
     (error-status (lambda () (lock-paths (list (path "x/../y"))))))

   (test-equal "the root is an invalid path"
     'invalid-path
     (error-status (lambda () (lock-paths (list "/")))))

   (test-equal "a path containing NUL is an invalid path, not split in two"
     'invalid-path
     (error-status (lambda ()
                     (lock-paths (list (string-append (path "a") "\0"
                                                      (path "b")))))))

   (let ((names (list (path "ascii-then") (path "caf\xe9-\x3bb-1.0"))))
     (test-equal "non-ASCII paths are encoded in UTF-8 and locked as given"
       (sort names string<?)
       (let ((lockset (lock-paths names)))
         (let ((held (lockset-paths lockset)))
           (lockset-release! lockset)
           held)))
     (test-assert "…their lock files are the UTF-8 names"
       (file-exists? (lock-file (path "caf\xe9-\x3bb-1.0")))))

   (test-equal "a NUL after ASCII characters in a second path is an invalid path"
     'invalid-path
     (error-status (lambda ()
                     (lock-paths (list (path "fine")
                                       (string-append (path "c") "\0x"))))))

   (test-equal "a non-string path is an invalid argument"
     'invalid-argument
     (error-status (lambda () (lock-paths (list (path "a") 42)))))

   (test-equal "an empty list is an invalid argument"
     'invalid-argument
     (error-status (lambda () (lock-paths '()))))

   (test-equal "a bare string instead of a list is an invalid argument"
     'invalid-argument
     (error-status (lambda () (lock-paths (path "a")))))

   (test-equal "an unknown backend is an invalid argument"
     'invalid-argument
     (error-status (lambda () (lock-paths (list (path "a")) #:backend 'posix))))

   (test-equal "a negative timeout is an invalid argument"
     'invalid-argument
     (error-status (lambda () (lock-paths (list (path "a")) #:timeout -1))))

   (test-equal "path-locked-by-me? of a non-string is an invalid argument"
     'invalid-argument
     (error-status (lambda () (path-locked-by-me? 'a))))

   (test-equal "path-locked-by-me? of a relative path is an invalid path"
     'invalid-path
     (error-status (lambda () (path-locked-by-me? "a"))))

   (test-equal "lockset-release! of a non-lock-set is an invalid argument"
     'invalid-argument
     (error-status (lambda () (lockset-release! 42))))

   (let ((lockset (lock-paths (list (path "a")))))
     (lockset-release! lockset)
     (test-equal "a released lock set used again is a stale handle"
       '(stale-handle stale-handle)
       (list (error-status (lambda () (lockset-delete-on-release! lockset)))
             (error-status (lambda () (lockset-check lockset))))))

   (test-assert "no bad input left anything held"
     (nothing-held?))

   (let ((e (with-exception-handler identity
              (lambda () (lock-paths (list "relative")))
              #:unwind? #t)))
     (test-assert "the condition is a &goalkeeper-error and an &error"
       (and (goalkeeper-error? e) (error? e)))
     (test-assert "its status is a symbol and its message a string, no integer"
       (and (symbol? (goalkeeper-error-status e))
            (string? (goalkeeper-error-message e))))
     (test-equal "generic handlers see the same message and the origin"
       (list (goalkeeper-error-message e) 'lock-paths)
       (list (exception-message e) (exception-origin e))))

   ;;
   ;; Exclusion between two Guile processes.
   ;;

   (let ((child (fork-child
                 (lambda (in out)
                   (let loop ((lockset #f))
                     (match (child-read-command in)
                       (('try name)
                        (let ((ls (lock-paths (list (path name)) #:wait? #f)))
                          (child-reply out (if ls 'locked 'busy))
                          (loop ls)))
                       ('mine?
                        (child-reply out (path-locked-by-me? (path "a")))
                        (loop lockset))
                       ('release
                        (lockset-release! lockset)
                        (child-reply out 'released)
                        (loop #f))
                       (_ #t)))))))
     (let ((lockset (lock-paths (list (path "a")))))
       (child-send child '(try "a"))
       (test-equal "another process cannot take a lock this one holds"
         'busy
         (child-receive child))
       (child-send child 'mine?)
       (test-equal "…and does not think it holds it"
         #f
         (child-receive child))
       (lockset-release! lockset)
       (child-send child '(try "a"))
       (test-equal "after release, the other process takes it"
         'locked
         (child-receive child))
       (test-equal "now this process cannot take it"
         #f
         (lock-paths (list (path "a")) #:wait? #f))
       (test-equal "all or nothing: a set with a busy path takes nothing"
         '(#f 0)
         (list (lock-paths (list (path "a") (path "b")) #:wait? #f)
               (held-path-count)))
       (child-send child 'release)
       (test-equal "the other process releases"
         'released
         (child-receive child))
       (let ((lockset (lock-paths (list (path "a")) #:wait? #f)))
         (test-assert "then this process takes it back"
           (lockset? lockset))
         (lockset-release! lockset))
       (child-send child 'exit)
       (test-equal "the child exits cleanly"
         0
         (child-wait child))))

   (let ((child (lock-in-child (path "a"))))
     (test-equal "a child holds a lock"
       'locked
       (child-receive child))
     (test-equal "killing the holder with SIGKILL frees the lock (G7)"
       '(#t #t)
       (begin
         (child-kill child)
         (let ((lockset (lock-paths (list (path "a")) #:wait? #f)))
           (list (lockset? lockset)
                 (begin (lockset-release! lockset) #t))))))

   (let ((child (lock-in-child (path "a") #:backend 'flock)))
     (child-receive child)
     (test-equal "the flock backend excludes another process too"
       #f
       (lock-paths (list (path "a")) #:wait? #f #:backend 'flock))
     (child-send child 'exit)
     (child-wait child))

   ;;
   ;; Forked children never hold or release their parent's locks (L5).
   ;;

   (let* ((lockset (lock-paths (list (path "a"))))
          (child (fork-child
                  (lambda (in out)
                    (child-reply out
                                 (list (error-status
                                        (lambda () (lockset-check lockset)))
                                       (path-locked-by-me? (path "a"))
                                       (lock-paths (list (path "a"))
                                                   #:wait? #f)
                                       (error-status
                                        (lambda () (lockset-release! lockset)))
                                       (lockset-released? lockset)))))))
     (test-equal "a fork child does not hold the inherited set, and releasing it there is a no-op"
       '(wrong-process #f #f no-error #t)
       (child-receive child))
     (child-wait child)
     (test-assert "the parent still holds its lock after the child released its copy"
       (and (lockset-check lockset) (path-locked-by-me? (path "a"))))
     (lockset-release! lockset))

   ;;
   ;; A lock set that becomes garbage while held is reported, not released.
   ;;

   (let ((child (fork-child
                 (lambda (in out)
                   (let ((port (open-output-string)))
                     (set-current-error-port port)
                     (let loop ((i 0))
                       (when (< i 5)
                         ;; No reference to the lock set survives this call.
                         (lock-paths (list (path (format #f "leak-~a" i))))
                         (loop (+ i 1))))
                     (let loop ((i 0))
                       (when (< i 5)
                         (gc)
                         (make-list 1000)          ;reach a safe point
                         (loop (+ i 1))))
                     (child-reply out
                                  (list (length
                                         (filter
                                          (lambda (line)
                                            (string-contains
                                             line "became garbage while still held"))
                                          (string-split (get-output-string port)
                                                        #\newline)))
                                        (held-path-count))))))))
     (match (child-receive child)
       ((reports held)
        (test-assert "a lock set collected while held is reported"
          (<= 1 reports 5))
        (test-equal "…and its locks are NOT released by the collector"
          5 held))
       (other
        (test-assert (format #f "the GC child replied ~s" other) #f)))
     (child-wait child))

   ;;
   ;; Waiting and timeouts.
   ;;

   (let ((child (lock-in-child (path "a"))))
     (child-receive child)

     (let* ((start (get-internal-real-time))
            (result (lock-paths (list (path "a")) #:wait? #f)))
       (test-assert "a try on a busy path returns #f at once"
         (and (not result) (< (seconds-since start) 1))))

     (let* ((start (get-internal-real-time))
            (result (lock-paths (list (path "a")) #:timeout 0.3))
            (elapsed (seconds-since start)))
       (test-assert "a wait with a timeout on a busy path returns #f after the timeout"
         (and (not result) (>= elapsed 0.29) (< elapsed 5))))

     (test-equal "call-with-path-locks raises timed-out and never calls the thunk"
       '(timed-out #f)
       (let* ((called? #f)
              (status (error-status
                       (lambda ()
                         (call-with-path-locks (list (path "a"))
                           (lambda () (set! called? #t))
                           #:timeout 0.1)))))
         (list status called?)))

     (child-send child 'release)
     (let* ((start (get-internal-real-time))
            (lockset (lock-paths (list (path "a")) #:timeout 10)))
       (test-assert "a waiter gets the lock once the holder releases it"
         (and (lockset? lockset) (< (seconds-since start) 5)))
       (lockset-release! lockset))
     (child-send child 'exit)
     (child-wait child))

   (test-assert "nothing is held at the end"
     (nothing-held?))))

(test-end "locks")
