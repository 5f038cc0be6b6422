;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (goalkeeper locks)
  #:use-module (goalkeeper ffi)
  #:use-module (system foreign)
  #:use-module (rnrs bytevectors)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:use-module (srfi srfi-9 gnu)
  #:use-module (ice-9 atomic)
  #:use-module (ice-9 match)
  #:re-export (&goalkeeper-error
               goalkeeper-error?
               goalkeeper-error-status
               goalkeeper-error-message
               %goalkeeper-abi-version
               goalkeeper-abi-version
               goalkeeper-version
               goalkeeper-library-file)
  #:export (lockset?
            lockset-paths
            lockset-backend
            lockset-released?
            lock-paths
            lockset-release!
            lockset-delete-on-release!
            lockset-check
            call-with-path-locks
            with-path-locks
            path-locked-by-me?
            held-paths
            held-path-count))

;;; Commentary:
;;;
;;; Store path locks, compatible with the build daemon's lock files: the
;;; lock of /gnu/store/…-foo is /gnu/store/…-foo.lock.  A lock set holds the
;;; locks of several paths, all or nothing, taken in sorted order.
;;;
;;; Explicit release is the API: 'with-path-locks' (released on normal
;;; return, on exceptions and on any other non-local exit) or
;;; 'lockset-release!'.  A lock set that becomes garbage while still held
;;; is NOT released by the collector (that is the bug class of Guix bug
;;; #31785); it is reported on the current error port after the next GC,
;;; and its locks stay held until the process exits.
;;;
;;; Expected outcomes of contention are values: 'lock-paths' returns #f
;;; when a path is busy (#:wait? #f) or the timeout passed.  Everything
;;; else is a &goalkeeper-error exception.
;;;
;;; Code:

(define-record-type <lockset>
  (%make-lockset handle-box requested backend paths)
  %lockset?
  ;; The library handle, in an atomic box so that release is idempotent
  ;; even when two threads race to release; 0 once released.
  (handle-box lockset-handle-box)
  (requested  lockset-requested)                   ;list of strings
  (backend    %lockset-backend)                    ;'ofd or 'flock
  (paths      lockset-cached-paths set-lockset-cached-paths!)) ;#f or list

(define (lockset? object)
  "Return #t if OBJECT is a lock set, as returned by 'lock-paths'."
  (%lockset? object))

(define (lockset-backend lockset)
  "Return the backend of LOCKSET, 'ofd or 'flock."
  (assert-lockset lockset 'lockset-backend)
  (%lockset-backend lockset))

(define (lockset-handle lockset)
  (atomic-box-ref (lockset-handle-box lockset)))

(define (take-lockset-handle! lockset)
  "Mark LOCKSET released and return its handle, or #f if it was already
released (by this thread or another)."
  (let* ((box    (lockset-handle-box lockset))
         (handle (atomic-box-ref box)))
    (and (not (eqv? handle 0))
         (eq? handle (atomic-box-compare-and-swap! box handle 0))
         handle)))

(set-record-type-printer! <lockset>
  (lambda (lockset port)
    (format port "#<lockset ~a ~a>"
            (if (lockset-released? lockset) "released" "held")
            (string-join (lockset-requested lockset)))))

(define (lockset-released? lockset)
  "Return #t if LOCKSET has been released, #f while it holds its locks."
  (zero? (lockset-handle lockset)))

(define (assert-lockset object origin)
  (unless (lockset? object)
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "~s is not a lock set" object)
                            origin)))

(define (live-handle lockset origin)
  "Return the handle of LOCKSET, raising a &goalkeeper-error with status
'stale-handle if it was released."
  (assert-lockset lockset origin)
  (let ((handle (lockset-handle lockset)))
    (when (zero? handle)
      (raise-goalkeeper-error
       'stale-handle
       (format #f "lock set ~s was already released" (lockset-requested lockset))
       origin))
    handle))


;;;
;;; Reporting lock sets collected while held.
;;;

(define %lockset-guardian
  ;; Every lock set, so that one that becomes unreachable while still held
  ;; can be reported.  The report never releases anything: a GC-driven
  ;; release is exactly the #31785 bug class.
  (make-guardian))

(define (report-collected-locksets)
  (let loop ()
    (match (%lockset-guardian)
      (#f #t)
      (lockset
       (unless (lockset-released? lockset)
         (format (current-error-port)
                 "goalkeeper: warning: lock set ~s became garbage while still \
held; it is NOT released by the garbage collector and stays held until the \
process exits; release lock sets with 'lockset-release!' or \
'with-path-locks'~%"
                 (lockset-requested lockset)))
       (loop)))))

(add-hook! after-gc-hook report-collected-locksets)


;;;
;;; Acquisition and release.
;;;

(define %int64-max (- (expt 2 63) 1))

(define (timeout->milliseconds wait? timeout origin)
  "Return the timeout_ms argument of gk_lockset_acquire_packed: 0 to try,
-1 to wait without limit, a positive number of milliseconds otherwise."
  (cond ((not wait?) 0)
        ((not timeout) -1)
        ((and (real? timeout) (>= timeout 0))
         (min %int64-max (inexact->exact (ceiling (* 1000 timeout)))))
        (else
         (raise-goalkeeper-error
          'invalid-argument
          (format #f "timeout ~s is not a non-negative number of seconds"
                  timeout)
          origin))))

(define* (lock-paths paths #:key (wait? #t) (timeout #f) (backend 'ofd))
  "Lock every store path in PATHS, a non-empty list of absolute file names,
all or nothing, and return a lock set.  The lock of path P is the file
P.lock in the same directory.

When WAIT? is true (the default), wait until every path can be locked,
holding none of them while waiting; when TIMEOUT is a number of seconds,
return #f if that time passed first.  When WAIT? is #f, try once and return
#f if another process holds one of the paths.  While waiting, signal
handlers and other asyncs run: one that raises an exception (the REPL's
Ctrl-C handler does) ends the wait, holding nothing, as it ends 'sleep'.

BACKEND is 'ofd (the default, which excludes the C++ guix-daemon's locks)
or 'flock (for stores shared with Nix); never mix them on one store.

Raise a &goalkeeper-error with status 'held-by-this-process if this process
already holds one of PATHS, and for invalid arguments ('invalid-path,
'invalid-argument) or system errors."
  (let ((lockset #f))
    (acquire! paths wait? timeout backend 'lock-paths
              (lambda (handle)
                (set! lockset (%make-lockset (make-atomic-box handle)
                                             paths backend #f))
                (%lockset-guardian lockset)))
    lockset))

(define (try-handle paths backend origin)
  "Try once to lock PATHS as 'lock-paths' does, and return the library's
handle of the lock set, or #f if a path is busy.  The arguments are
checked in their order; an error raised on the way leaves this thread's
scratch area with the caller that took it (the next call makes a fresh
one), which spares every call an exception handler."
  (let ((scratch (take-scratch)))
    (call-with-values (lambda () (scratch-paths scratch paths origin))
      (lambda (pointer len)
        (let* ((backend* (backend->c backend origin))
               (status   (%gk-lockset-acquire-packed
                          pointer len backend* 0 (scratch-out-pointer scratch)))
               (handle   (bytevector-u64-native-ref (scratch-out scratch) 0)))
          (give-back-scratch! scratch)
          (cond ((= status %gk-ok) handle)
                ((or (= status %gk-busy) (= status %gk-timed-out)) #f)
                (else (status-error status origin))))))))

(define (wait-until-free paths backend seconds origin)
  "Block until the locks of PATHS, which another process holds, may be
free (released, or their lock files deleted), or for at most SECONDS (#f:
no limit), holding nothing.  The wait is a 'select' on the descriptor of a
gk_lock_wait, so asyncs run meanwhile; the wait is freed however control
leaves."
  (define (check status)
    (unless (= status %gk-ok)
      (status-error status origin)))
  (let ((wait 0))
    (dynamic-wind
      (const #t)
      (lambda ()
        (let ((pointers (map (lambda (path) (string->pointer path "UTF-8"))
                             paths))
              (out      (make-bytevector 8 0)))
          (call-with-blocked-asyncs       ;an async must find it in WAIT
           (lambda ()
             (let ((array (make-bytevector (* (length paths) (sizeof '*)) 0)))
               (for-each (lambda (i pointer)
                           (bytevector-uint-set! array (* i (sizeof '*))
                                                 (pointer-address pointer)
                                                 (native-endianness)
                                                 (sizeof '*)))
                         (iota (length pointers)) pointers)
               (check (%gk-lock-wait-new (bytevector->pointer array)
                                         (length pointers)
                                         (backend->c backend origin)
                                         (bytevector->pointer out)))
               (set! wait (bytevector-u64-native-ref out 0)))))
          (check (%gk-lock-wait-fd wait (bytevector->pointer out)))
          (let ((fd (bytevector-s32-native-ref out 0)))
            (catch 'system-error
              (lambda ()
                (if seconds
                    (let ((whole (inexact->exact (floor seconds))))
                      (select (list fd) '() '() whole
                              (inexact->exact
                               (round (* 1e6 (- seconds whole))))))
                    (select (list fd) '() '())))
              (lambda args
                ;; A signal: its handler ran and returned; the caller
                ;; tries again.
                (unless (= EINTR (system-error-errno args))
                  (apply throw args)))))))
      (lambda ()
        (call-with-blocked-asyncs       ;an async must not skip the free
         (lambda ()
           (unless (zero? wait)
             (%gk-lock-wait-free wait)
             (set! wait 0))))))))

(define (acquire! paths wait? timeout backend origin keep!)
  "Lock PATHS as 'lock-paths' does and call (KEEP! HANDLE) with the
library's handle of the lock set; return #f, without calling KEEP!, if a
path is busy or TIMEOUT passed.  Try; if a path is busy, wait until the
locks may be free (see 'wait-until-free'), and try again, until the
deadline.  Asyncs run while it waits, never between a successful try and
KEEP!: an async's exception (Ctrl-C) then leaves the handle with its
owner, or no lock taken at all."
  (define ms (timeout->milliseconds wait? timeout origin)) ;checks TIMEOUT
  (define deadline
    (and (positive? ms)
         (+ (get-internal-real-time)
            (* timeout internal-time-units-per-second))))
  (define (try!)
    (call-with-blocked-asyncs
     (lambda ()
       (let ((handle (try-handle paths backend origin)))
         (and handle
              (begin (keep! handle) #t))))))
  (let retry ()
    (or (try!)
        (and (not (zero? ms))
             (let ((left (and deadline
                              (/ (- deadline (get-internal-real-time))
                                 internal-time-units-per-second))))
               (and (or (not left) (positive? left))
                    (begin
                      (wait-until-free paths backend
                                       (and left (exact->inexact left))
                                       origin)
                      (retry))))))))

(define (release-handle handle origin)
  "Release the lock set HANDLE; a lock set inherited from the parent of a
fork child is only forgotten.  Raise a &goalkeeper-error if a lock file
could not be deleted (the locks are released even then)."
  (let ((status (%gk-lockset-release handle)))
    (unless (or (= status %gk-ok) (= status %gk-wrong-process))
      (status-error status origin))))

(define (lockset-release! lockset)
  "Release the locks of LOCKSET, deleting their lock files if
'lockset-delete-on-release!' asked for it.  Releasing a lock set that was
already released does nothing, so this may be called from several cleanup
paths.  In a child process created by 'primitive-fork', an inherited lock
set is not held (the child never holds its parent's locks); releasing it
there only marks it released.

Raise a &goalkeeper-error if a lock file could not be deleted; the locks
are released even then."
  (assert-lockset lockset 'lockset-release!)
  ;; No async between marking it released and releasing it.
  (call-with-blocked-asyncs
   (lambda ()
     (let ((handle (take-lockset-handle! lockset)))
       (when handle
         (release-handle handle 'lockset-release!))))))

(define* (lockset-delete-on-release! lockset #:optional (delete? #t))
  "Ask that releasing LOCKSET delete its lock files when DELETE? is true
(the default), or not.  Deleting is allowed once the paths are valid.
Raise a &goalkeeper-error with status 'stale-handle if LOCKSET was already
released."
  (check-status (%gk-lockset-set-deletion
                 (live-handle lockset 'lockset-delete-on-release!)
                 (if delete? 1 0))
                'lockset-delete-on-release!))

(define (lockset-check lockset)
  "Check the ledger invariants of LOCKSET: it belongs to this process and
each of its paths is registered to it with an open descriptor.  Return #t,
or raise a &goalkeeper-error saying what does not hold."
  (check-status (%gk-lockset-check (live-handle lockset 'lockset-check))
                'lockset-check)
  #t)

(define (lockset-paths lockset)
  "Return the store paths of LOCKSET, sorted and without duplicates, as the
library normalised them."
  (assert-lockset lockset 'lockset-paths)
  (or (lockset-cached-paths lockset)
      (if (lockset-released? lockset)
          (sort (delete-duplicates (lockset-requested lockset)) string<?)
          (let ((paths (read-list (lambda (buf cap len-out)
                                    (%gk-lockset-paths (lockset-handle lockset)
                                                       buf cap len-out))
                                  'lockset-paths)))
            (set-lockset-cached-paths! lockset paths)
            paths))))

(define* (call-with-path-locks paths thunk
                               #:key (timeout #f) (backend 'ofd)
                               (delete-on-success? #f))
  "Call THUNK with every store path in PATHS locked, and return its values.
The locks are released when THUNK returns, raises an exception, or exits
non-locally in any other way (continuations, 'abort-to-prompt'); they are
taken again if THUNK's continuation is re-entered.

Wait for the locks without limit, or for TIMEOUT seconds, after which raise
a &goalkeeper-error with status 'timed-out; signal handlers run meanwhile,
as for 'lock-paths'.  When DELETE-ON-SUCCESS? is
true, the lock files are deleted if THUNK returns normally (the paths are
then valid).  BACKEND is as for 'lock-paths'."
  ;; The extent owns its lock set, which nobody else sees: it is kept as
  ;; the bare handle, in an atomic box (0: none held), so that leaving the
  ;; extent releases it exactly once.  Without DELETE-ON-SUCCESS?, THUNK
  ;; itself is the body: nothing is allocated to follow how it returned.
  (define (timed-out)
    (raise-goalkeeper-error
     'timed-out
     (format #f "could not lock ~s within ~a s" paths timeout)
     'call-with-path-locks))
  (let ((handle (make-atomic-box 0))
        (success? (and delete-on-success? (make-atomic-box #f))))
    (dynamic-wind
      (lambda ()
        (when success?
          (atomic-box-set! success? #f))
        (unless (acquire! paths #t timeout backend 'call-with-path-locks
                          (lambda (held) (atomic-box-set! handle held)))
          (timed-out)))
      (if success?
          (lambda ()
            (call-with-values thunk
              (lambda results
                (atomic-box-set! success? #t)
                (apply values results))))
          thunk)
      (lambda ()
        (call-with-blocked-asyncs     ;no async between the swap and the release
         (lambda ()
           (let ((held (atomic-box-swap! handle 0)))
             (unless (eqv? held 0)
               (if (and success? (atomic-box-ref success?))
                   (release-deleting held)
                   (release-handle held 'call-with-path-locks))))))))))

(define (release-deleting handle)
  "Release the lock set HANDLE, deleting its lock files.  The locks are
released even if deletion cannot be asked for (then the error is raised
after the release); in a fork child the lock set is only forgotten."
  (let ((status (%gk-lockset-set-deletion handle 1)))
    (if (or (= status %gk-ok) (= status %gk-wrong-process))
        (release-handle handle 'call-with-path-locks)
        (let ((message (last-error-message)))
          (release-handle handle 'call-with-path-locks)
          (raise-goalkeeper-error (status->symbol status) message
                                  'call-with-path-locks)))))

(define-syntax-rule (with-path-locks paths exp ...)
  "Evaluate EXP... with every store path in PATHS locked, releasing the
locks however control leaves EXP..., as with 'call-with-path-locks'."
  (call-with-path-locks paths (lambda () exp ...)))


;;;
;;; Introspection.
;;;

(define (path-locked-by-me? path)
  "Return #t if this process holds the lock on store path PATH, through a
lock set or a scheduler goal, #f otherwise."
  (unless (string? path)
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "store path ~s is not a string" path)
                            'path-locked-by-me?))
  (when (string-index path #\nul)
    (raise-goalkeeper-error 'invalid-path
                            (format #f "store path ~s contains a NUL character"
                                    path)
                            'path-locked-by-me?))
  (let* ((scratch (take-scratch))
         (status  (%gk-path-is-locked-by-me
                   (scratch-c-string-pointer scratch path)
                   (scratch-out-pointer scratch)))
         (locked? (not (zero? (bytevector-u8-ref (scratch-out scratch) 0)))))
    (give-back-scratch! scratch)
    (check-status status 'path-locked-by-me?)
    locked?))

(define (held-paths)
  "Return the sorted list of store paths whose locks this process holds."
  (read-list %gk-held-paths 'held-paths))

(define (held-path-count)
  "Return the number of store paths whose locks this process holds."
  (let* ((scratch (take-scratch))
         (status  (%gk-held-count (scratch-out-pointer scratch)))
         (count   (size-t-ref (scratch-out scratch) 0)))
    (give-back-scratch! scratch)
    (check-status status 'held-path-count)
    count))

;;; locks.scm ends here
