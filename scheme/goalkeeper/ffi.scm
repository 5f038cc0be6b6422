;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (goalkeeper ffi)
  #:use-module (goalkeeper abi)
  #:use-module (system foreign)
  #:use-module (system foreign-library)
  #:use-module (ice-9 exceptions)
  #:use-module (ice-9 control)
  #:use-module (ice-9 match)
  #:use-module (rnrs bytevectors)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:export (%goalkeeper-abi-version
            goalkeeper-library-file
            goalkeeper-version
            goalkeeper-abi-version

            &goalkeeper-error
            goalkeeper-error?
            goalkeeper-error-status
            goalkeeper-error-message
            raise-goalkeeper-error
            exception->string

            define-goalkeeper-procedure
            status->symbol
            status-error
            check-status
            last-error-message
            %gk-ok
            %gk-busy
            %gk-held-by-this-process
            %gk-timed-out
            %gk-wrong-process
            backend->c

            pack-paths
            unpack-paths
            take-scratch
            give-back-scratch!
            scratch-out
            scratch-out-pointer
            scratch-input-pointer
            scratch-paths
            scratch-c-string-pointer
            size-t-ref
            read-list

            %gk-lockset-acquire-packed
            %gk-lock-wait-new
            %gk-lock-wait-fd
            %gk-lock-wait-free
            %gk-lockset-set-deletion
            %gk-lockset-release
            %gk-lockset-check
            %gk-lockset-paths
            %gk-path-is-locked-by-me
            %gk-held-paths
            %gk-held-count

            %gk-worker-new
            %gk-worker-free
            %gk-worker-set-valid-path
            %gk-worker-set-cached-failure
            %gk-worker-add-goal-packed
            %gk-worker-add-goals
            %gk-worker-next-events
            %gk-worker-report-many
            %gk-worker-goal-tag
            %gk-worker-add-dependency
            %gk-worker-next-event
            %gk-worker-report
            %gk-worker-cancel
            %gk-worker-goal-result
            %gk-worker-goal-outputs
            %gk-worker-audit
            %gk-worker-fd
            %gk-worker-take-log
            %gk-outcome-name

            %gk-worker-take-log-records
            %gk-log-kind-name))

;;; Commentary:
;;;
;;; Raw bindings to libgoalkeeper, the C ABI of goalkeeper's Rust core,
;;; made with (system foreign).  Nothing here is meant for users: the
;;; procedures named %gk-* take and return C values, status integers
;;; included.  (goalkeeper locks) and (goalkeeper scheduler) build the
;;; public API on top of them, and never let an integer status out.
;;;
;;; The library is loaded on first use, not when this module is loaded, so
;;; that modules can be compiled without it.  It is looked for, in order:
;;;
;;;   1. in the file named by the GOALKEEPER_LIBRARY environment variable;
;;;      when set, it is the only candidate, so a wrong value is reported
;;;      rather than silently replaced by another copy of the library;
;;;   2. in the file substituted into (goalkeeper config) by 'make install'
;;;      (or by 'make' for the build tree), if that module exists;
;;;   3. by name, through the dynamic linker.
;;;
;;; A candidate that cannot be loaded, or whose gk_abi_version differs from
;;; %goalkeeper-abi-version, is skipped; when none fits, ONE error names
;;; every candidate tried and why it was rejected.  A function missing
;;; from an older library is an error when it is called, not at load time,
;;; as in Guile-Git.
;;;
;;; Code:

(define %goalkeeper-abi-version
  ;; The ABI version these bindings were written for (GK_ABI_VERSION).
  3)


;;;
;;; Errors.
;;;

(define &goalkeeper-error
  (make-exception-type '&goalkeeper-error &error '(status message)))

(define make-goalkeeper-error
  (record-constructor &goalkeeper-error))

(define goalkeeper-error?
  (let ((predicate (exception-predicate &goalkeeper-error)))
    (lambda (object)
      "Return #t if OBJECT is a &goalkeeper-error exception."
      (predicate object))))

(define goalkeeper-error-status
  (let ((status (exception-accessor &goalkeeper-error
                                    (record-accessor &goalkeeper-error
                                                     'status))))
    (lambda (exception)
      "Return the status of EXCEPTION, a &goalkeeper-error: a symbol such
as 'invalid-path, 'held-by-this-process, 'stale-handle, 'foreign-lock-file,
'library-not-found, 'abi-mismatch or 'missing-symbol."
      (status exception))))

(define goalkeeper-error-message
  (let ((message (exception-accessor &goalkeeper-error
                                     (record-accessor &goalkeeper-error
                                                      'message))))
    (lambda (exception)
      "Return the message of EXCEPTION, a &goalkeeper-error: a string
naming the path, handle, goal or library concerned."
      (message exception))))

(define* (raise-goalkeeper-error status message #:optional origin)
  "Raise a non-continuable &goalkeeper-error exception with STATUS, a
symbol such as 'invalid-path, and MESSAGE, a string.  ORIGIN, if given, is
the name of the Scheme procedure that failed.  The exception also carries
&message and &origin, so generic handlers can print it."
  (raise-exception
   (make-exception (make-goalkeeper-error status message)
                   (make-exception-with-message message)
                   (make-exception-with-origin origin))))


;;;
;;; Finding and loading the library.
;;;

(define-record-type <library>
  (make-library file foreign abi version)
  library?
  (file    library-file)                          ;string, as given to dlopen
  (foreign library-foreign)                       ;<foreign-library>
  (abi     library-abi)                           ;integer
  (version library-version))                      ;string

(define (exception->string exception)
  "Return a one-line description of EXCEPTION, as raised by
load-foreign-library or dlsym."
  (let ((message   (and (exception-with-message? exception)
                        (exception-message exception)))
        (irritants (if (exception-with-irritants? exception)
                       (exception-irritants exception)
                       '())))
    (cond ((not message)
           (object->string exception))
          ((and (string-prefix? "file" message)
                (string-contains message "message")
                (= 2 (length irritants))
                (string? (second irritants)))
           ;; load-foreign-library's "file not found" and dlopen errors:
           ;; "file: ~S, message: ~S" and "file ~S, message ~S".
           (second irritants))
          (else
           (catch #t
             (lambda () (apply format #f message irritants))
             (lambda _ message))))))

(define (installed-library-file)
  "Return the library file recorded in (goalkeeper config), or #f when that
module does not exist (an unconfigured source tree)."
  (false-if-exception
   (let ((file (module-ref (resolve-interface '(goalkeeper config))
                           '%goalkeeper-library)))
     (and (string? file) (not (string-null? file)) file))))

(define (library-candidates)
  "Return the list of (ORIGIN . FILE) pairs to try, in order."
  (match (getenv "GOALKEEPER_LIBRARY")
    ((or #f "")
     `(,@(match (installed-library-file)
           (#f '())
           (file `(("the installed library" . ,file))))
       ("the dynamic linker" . "libgoalkeeper.so.0")
       ("the dynamic linker" . "libgoalkeeper")))
    (file
     `(("GOALKEEPER_LIBRARY" . ,file)))))

(define (try-library file)
  "Try to load FILE as libgoalkeeper.  Return a <library> record, or a pair
(STATUS . REASON) saying why FILE does not fit: STATUS is
'library-not-found or 'abi-mismatch, REASON a string."
  (let/ec return
   (let ()
    (define (fail status fmt . args)
      (return (cons status (apply format #f fmt args))))
    (define foreign
      (with-exception-handler
          (lambda (e)
            (fail 'library-not-found "~a" (exception->string e)))
        (lambda () (load-foreign-library file #:lazy? #t))
        #:unwind? #t))
    (define (function name return-type)
      (with-exception-handler
          (lambda (e)
            (fail 'library-not-found
                  "it does not export ~a, so it is not libgoalkeeper" name))
        (lambda ()
          (foreign-library-function foreign name #:return-type return-type))
        #:unwind? #t))
    (let ((found ((function "gk_abi_version" uint32))))
      (if (= found %goalkeeper-abi-version)
          (make-library file foreign found
                        (pointer->string ((function "gk_version" '*))
                                         -1 "UTF-8"))
          (fail 'abi-mismatch "it has ABI version ~a, but these bindings \
expect ABI version ~a" found %goalkeeper-abi-version))))))

(define (find-library)
  "Load the first candidate library that fits, or raise one
&goalkeeper-error that names every candidate tried.  Its status is
'abi-mismatch if some candidate was rejected for its ABI version,
'library-not-found otherwise."
  (let loop ((candidates (library-candidates))
             (rejected '()))                    ;list of (ORIGIN FILE STATUS REASON)
    (match candidates
      (()
       (raise-goalkeeper-error
        (if (any (match-lambda
                   ((_ _ status _) (eq? status 'abi-mismatch)))
                 rejected)
            'abi-mismatch
            'library-not-found)
        (format #f "could not load libgoalkeeper (ABI version ~a expected); \
tried ~a"
                %goalkeeper-abi-version
                (string-join (map (match-lambda
                                    ((origin file _ reason)
                                     (format #f "~a (~a): ~a"
                                             file origin reason)))
                                  (reverse rejected))
                             "; "))
        'goalkeeper-library))
      (((origin . file) . rest)
       (match (try-library file)
         ((? library? library) library)
         ((status . reason)
          (loop rest (cons (list origin file status reason) rejected))))))))

(define %library
  (delay (find-library)))

(define (library)
  (force %library))

(define (goalkeeper-library-file)
  "Load libgoalkeeper if needed and return the file name it was loaded
from.  Raise a &goalkeeper-error if it cannot be found."
  (library-file (library)))

(define (goalkeeper-version)
  "Return the version of the loaded libgoalkeeper, a string such as
\"0.1.0\"."
  (library-version (library)))

(define (goalkeeper-abi-version)
  "Return the ABI version of the loaded libgoalkeeper, an integer equal to
%goalkeeper-abi-version."
  (library-abi (library)))

(define (library-procedure name return-type arg-types)
  "Return a procedure calling NAME in libgoalkeeper.  When NAME is missing
from the library (an older libgoalkeeper), return a procedure that raises a
&goalkeeper-error when called, so that only its callers fail.  Only the
linker's \"not found\" is taken for a missing symbol: any other exception
raised meanwhile (an async's, such as Ctrl-C) goes on as it is."
  (let ((lib (library)))
    (catch 'misc-error
      (lambda ()
        (foreign-library-function (library-foreign lib) name
                                  #:return-type return-type
                                  #:arg-types arg-types))
      (lambda (key subr . rest)
        (unless (equal? subr "dlsym")
          (apply throw key subr rest))
        (lambda args
          (raise-goalkeeper-error
           'missing-symbol
           (format #f "~a is not exported by ~a (libgoalkeeper ~a, ABI ~a): \
the library is older than these bindings"
                   name (library-file lib) (library-version lib)
                   (library-abi lib))
           (string->symbol name)))))))

(define-syntax define-goalkeeper-procedure
  (lambda (s)
    "Define NAME as a procedure of FORMALS calling C-NAME in libgoalkeeper.
The library and the symbol are looked up on the first call, which then
replaces NAME's value with the foreign procedure itself: later calls cost
what a direct foreign call costs (a promise forced on every call cost
about 50 ns more).  A symbol missing from the library is still an error
when it is called, not when this module is loaded: NAME then becomes a
procedure that raises."
    (syntax-case s ()
      ((_ (name formals ...) c-name return-type (arg-types ...))
       (string? (syntax->datum #'c-name))
       (with-syntax ((doc (string-append
                           "Call " (syntax->datum #'c-name)
                           " in libgoalkeeper and return its raw result.")))
         #'(define name
             (lambda (formals ...)
               doc
               (let ((proc (library-procedure c-name return-type
                                              (list arg-types ...))))
                 (set! name proc)
                 (proc formals ...)))))))))

;;;
;;; Statuses.
;;;

(define-goalkeeper-procedure (%gk-last-error-message)
  "gk_last_error_message" '* ())
(define-goalkeeper-procedure (%gk-status-name status)
  "gk_status_name" '* (int32))

(define (last-error-message)
  "Return the message of the last failed goalkeeper call on this thread."
  (pointer->string (%gk-last-error-message) -1 "UTF-8"))

(define %status-symbols
  ;; Cache of status integer -> symbol, for statuses newer than
  ;; %gk-status (named through gk_status_name).
  (make-hash-table))

(define (status->symbol status)
  "Return the symbol naming STATUS, an integer gk_status: GK_BUSY becomes
'busy, GK_ERROR_INVALID_PATH becomes 'invalid-path, and so on (see
%gk-status).  A status these bindings do not know is named after what
gk_status_name says."
  (or (c-enum-symbol %gk-status status)
      (hashv-ref %status-symbols status)
      (let* ((name (pointer->string (%gk-status-name status) -1 "UTF-8"))
             (bare (cond ((string-prefix? "GK_ERROR_" name)
                          (string-drop name 9))
                         ((string-prefix? "GK_" name)
                          (string-drop name 3))
                         (else name)))
             (symbol (string->symbol
                      (string-map (lambda (c) (if (char=? c #\_) #\- c))
                                  (string-downcase bare)))))
        (hashv-set! %status-symbols status symbol)
        symbol)))

(define (status-error status origin)
  "Raise a &goalkeeper-error for STATUS, a non-zero gk_status integer
just returned by a call made by ORIGIN, with the library's message."
  (raise-goalkeeper-error (status->symbol status) (last-error-message)
                          origin))

(define-syntax-rule (check-status expr origin)
  "Evaluate EXPR, a call returning a gk_status; raise a &goalkeeper-error
unless it is GK_OK."
  (let ((status expr))
    (unless (zero? status)
      (status-error status origin))))


;;;
;;; Marshalling.
;;;

;; The gk_status values the bindings treat as outcomes rather than errors.
(define %gk-ok (c-enum-value %gk-status 'ok))
(define %gk-busy (c-enum-value %gk-status 'busy))
(define %gk-held-by-this-process
  (c-enum-value %gk-status 'held-by-this-process))
(define %gk-timed-out (c-enum-value %gk-status 'timed-out))
(define %gk-wrong-process (c-enum-value %gk-status 'wrong-process))
(define %buffer-too-small (c-enum-value %gk-status 'buffer-too-small))

(define (backend->c backend origin)
  "Return the gk_backend value for BACKEND, 'ofd or 'flock; raise a
&goalkeeper-error naming ORIGIN for anything else."
  (or (c-enum-value %gk-backend backend)
      (raise-goalkeeper-error
       'invalid-argument
       (format #f "unknown lock backend ~s; expected one of ~s"
               backend (c-enum-symbols %gk-backend))
       origin)))

(define* (pack-paths paths origin #:key (allow-empty? #f))
  "Return a bytevector holding PATHS, a non-empty list of strings (or an
empty one if ALLOW-EMPTY?), each encoded in UTF-8 and terminated by NUL:
the packed form taken by gk_lockset_acquire_packed and
gk_worker_add_goal_packed.  Raise a &goalkeeper-error naming ORIGIN for
anything else, and for a string containing NUL, which the packed form
cannot carry."
  (define (bad status fmt . args)
    (raise-goalkeeper-error status (apply format #f fmt args) origin))
  (unless (and (list? paths) (or allow-empty? (pair? paths)))
    (bad 'invalid-argument "expected a ~alist of store paths, got ~s"
         (if allow-empty? "" "non-empty ") paths))
  (for-each (lambda (path)
              (unless (string? path)
                (bad 'invalid-argument "store path ~s is not a string" path))
              (when (string-index path #\nul)
                (bad 'invalid-path "store path ~s contains a NUL character"
                     path)))
            paths)
  ;; One join and one encoding for the whole batch (doc/design.md#7-measured-limits).
  (string->utf8 (string-join paths "\0" 'suffix)))

(define (unpack-paths bv len)
  "Return the list of strings packed in the first LEN bytes of BV, each
terminated by NUL."
  (if (zero? len)
      '()
      (let ((text (utf8->string (if (= len (bytevector-length bv))
                                    bv
                                    (let ((copy (make-bytevector len)))
                                      (bytevector-copy! bv 0 copy 0 len)
                                      copy)))))
        ;; Drop the empty string after the final NUL.
        (drop-right (string-split text #\nul) 1))))

;; Scratch memory for arguments and out-parameters.  'bytevector->pointer'
;; costs about 0.8 µs here (it registers a weak reference), more than a
;; whole FFI call, so each thread keeps a scratch area whose pointers are
;; made once.  A call takes the thread's scratch, uses it and gives it back;
;; a nested call (from a predicate, an async) finds none and makes its own.

(define-record-type <scratch>
  (%make-scratch out out-pointer in in-pointer)
  scratch?
  (out         scratch-out)                       ;bytevector
  (out-pointer scratch-out-pointer)               ;pointer to it
  (in          scratch-in set-scratch-in!)        ;bytevector, grows
  (in-pointer  scratch-in-pointer* set-scratch-in-pointer!))

(define %scratch-out-size
  ;; Room for the largest struct out-parameter.
  (apply max (map c-struct-size %abi-structs)))

(define %scratch
  (make-thread-local-fluid #f))

(define (make-scratch)
  (let ((out (make-bytevector %scratch-out-size 0))
        (in  (make-bytevector 1024 0)))
    (%make-scratch out (bytevector->pointer out) in (bytevector->pointer in))))

(define (take-scratch)
  "Return this thread's scratch area, which the caller owns until it calls
'give-back-scratch!'; a fresh one if it is in use."
  (let ((scratch (fluid-ref %scratch)))
    (if scratch
        (begin
          (fluid-set! %scratch #f)
          scratch)
        (make-scratch))))

(define (give-back-scratch! scratch)
  "Make SCRATCH this thread's scratch area again."
  (fluid-set! %scratch scratch))

(define (scratch-input-pointer scratch bv)
  "Copy BV into the input area of SCRATCH, growing it if needed, and return
a pointer to the copy."
  (let ((len (bytevector-length bv)))
    (bytevector-copy! bv 0 (scratch-in-room! scratch len) 0 len)
    (scratch-in-pointer* scratch)))

(define (scratch-in-room! scratch len)
  "Make the input area of SCRATCH hold at least LEN bytes; return it."
  (when (> len (bytevector-length (scratch-in scratch)))
    (let ((in (make-bytevector (max len (* 2 (bytevector-length
                                               (scratch-in scratch))))
                               0)))
      (set-scratch-in! scratch in)
      (set-scratch-in-pointer! scratch (bytevector->pointer in))))
  (scratch-in scratch))

(define (scratch-paths scratch paths origin)
  "Write PATHS, a non-empty list of strings, into the input area of SCRATCH
in the packed form of 'pack-paths' (each encoded in UTF-8 and terminated
by NUL), checking them as 'pack-paths' does; return two values, a pointer
to it and its length.  ASCII paths, which store paths are, are encoded in
one pass that also looks for NUL (about 130 ns for 60 characters, against
about 600 ns for the checks, 'string-join' and 'string->utf8'); anything
else goes through 'pack-paths'."
  (define (slow)
    (let ((packed (pack-paths paths origin)))
      (values (scratch-input-pointer scratch packed)
              (bytevector-length packed))))
  (let size ((rest paths) (len 0))
    (match rest
      (()
       (if (zero? len)
           (slow)                                ;an empty list: its error
           (let ((in (scratch-in-room! scratch len)))
             (let copy ((rest paths) (at 0))
               (match rest
                 (()
                  (values (scratch-in-pointer* scratch) at))
                 ((path . rest)
                  (let ((n (string-length path)))
                    (let char ((i 0))
                      (if (< i n)
                          (let ((c (char->integer (string-ref path i))))
                            (if (and (< 0 c) (< c 128))
                                (begin
                                  (bytevector-u8-set! in (+ at i) c)
                                  (char (+ i 1)))
                                (slow)))          ;NUL or not ASCII
                          (begin
                            (bytevector-u8-set! in (+ at n) 0)
                            (copy rest (+ at n 1))))))))))))
      (((? string? path) . rest)
       (size rest (+ len (string-length path) 1)))
      (_ (slow)))))                               ;not a list of strings

(define (scratch-c-string-pointer scratch str)
  "Copy STR, encoded in UTF-8 and NUL-terminated, into the input area of
SCRATCH, and return a pointer to it."
  (let* ((utf8 (string->utf8 str))
         (len  (bytevector-length utf8))
         (with-nul (make-bytevector (+ len 1) 0)))
    (bytevector-copy! utf8 0 with-nul 0 len)
    (scratch-input-pointer scratch with-nul)))

(define %size-t-size (sizeof size_t))

(define (size-t-ref bv offset)
  "Return the size_t stored at OFFSET in BV."
  (bytevector-uint-ref bv offset (native-endianness) %size-t-size))

(define (read-list call origin)
  "Return the list of strings written by CALL, a procedure of a buffer
pointer, a capacity and a size_t out-pointer following the gk_held_paths
convention: first probe the size, then fetch, retrying if the list grew."
  (let loop ((capacity 0))
    (let* ((buffer  (and (positive? capacity) (make-bytevector capacity)))
           (scratch (take-scratch))
           (status  (call (if buffer (bytevector->pointer buffer) %null-pointer)
                          capacity (scratch-out-pointer scratch)))
           (needed  (size-t-ref (scratch-out scratch) 0)))
      (give-back-scratch! scratch)
      (cond ((zero? status)
             (if buffer (unpack-paths buffer needed) '()))
            ((= status %buffer-too-small)
             (loop (max needed (* 2 capacity))))
            (else
             (status-error status origin))))))

;;;
;;; Lock sets.
;;;

(define-goalkeeper-procedure (%gk-lockset-acquire-packed buf len backend
                                                         timeout-ms out)
  "gk_lockset_acquire_packed" int32 ('* size_t uint32 int64 '*))
(define-goalkeeper-procedure (%gk-lock-wait-new paths n-paths backend out)
  "gk_lock_wait_new" int32 ('* size_t uint32 '*))
(define-goalkeeper-procedure (%gk-lock-wait-fd wait fd-out)
  "gk_lock_wait_fd" int32 (uint64 '*))
(define-goalkeeper-procedure (%gk-lock-wait-free wait)
  "gk_lock_wait_free" int32 (uint64))
(define-goalkeeper-procedure (%gk-lockset-set-deletion set delete?)
  "gk_lockset_set_deletion" int32 (uint64 uint8))
(define-goalkeeper-procedure (%gk-lockset-release set)
  "gk_lockset_release" int32 (uint64))
(define-goalkeeper-procedure (%gk-lockset-check set)
  "gk_lockset_check" int32 (uint64))
(define-goalkeeper-procedure (%gk-lockset-paths set buf cap len-out)
  "gk_lockset_paths" int32 (uint64 '* size_t '*))
(define-goalkeeper-procedure (%gk-path-is-locked-by-me path out)
  "gk_path_is_locked_by_me" int32 ('* '*))
(define-goalkeeper-procedure (%gk-held-paths buf cap len-out)
  "gk_held_paths" int32 ('* size_t '*))
(define-goalkeeper-procedure (%gk-held-count out)
  "gk_held_count" int32 ('*))

;;;
;;; Workers.
;;;

(define-goalkeeper-procedure (%gk-worker-new options out)
  "gk_worker_new" int32 ('* '*))
(define-goalkeeper-procedure (%gk-worker-free worker)
  "gk_worker_free" int32 (uint64))
(define-goalkeeper-procedure (%gk-worker-set-valid-path worker predicate data)
  "gk_worker_set_valid_path" int32 (uint64 '* '*))
(define-goalkeeper-procedure (%gk-worker-set-cached-failure worker predicate
                                                            data)
  "gk_worker_set_cached_failure" int32 (uint64 '* '*))
(define-goalkeeper-procedure (%gk-worker-add-goal-packed worker kind outputs
                                                         len mode tag out)
  "gk_worker_add_goal_packed" int32 (uint64 uint32 '* size_t uint32 uint64
                                            '*))
(define-goalkeeper-procedure (%gk-worker-add-goals worker batch ids-out err)
  "gk_worker_add_goals" int32 (uint64 '* '* '*))
(define-goalkeeper-procedure (%gk-worker-next-events worker events cap n-out)
  "gk_worker_next_events" int32 (uint64 '* size_t '*))
(define-goalkeeper-procedure (%gk-worker-report-many worker reports n err)
  "gk_worker_report_many" int32 (uint64 '* size_t '*))
(define-goalkeeper-procedure (%gk-worker-goal-tag worker goal out)
  "gk_worker_goal_tag" int32 (uint64 uint64 '*))
(define-goalkeeper-procedure (%gk-worker-add-dependency worker goal dependency)
  "gk_worker_add_dependency" int32 (uint64 uint64 uint64))
(define-goalkeeper-procedure (%gk-worker-next-event worker out)
  "gk_worker_next_event" int32 (uint64 '*))
(define-goalkeeper-procedure (%gk-worker-report worker goal outcome)
  "gk_worker_report" int32 (uint64 uint64 uint32))
(define-goalkeeper-procedure (%gk-worker-cancel worker goal)
  "gk_worker_cancel" int32 (uint64 uint64))
(define-goalkeeper-procedure (%gk-worker-goal-result worker goal out)
  "gk_worker_goal_result" int32 (uint64 uint64 '*))
(define-goalkeeper-procedure (%gk-worker-goal-outputs worker goal buf cap
                                                      len-out)
  "gk_worker_goal_outputs" int32 (uint64 uint64 '* size_t '*))
(define-goalkeeper-procedure (%gk-worker-audit worker out)
  "gk_worker_audit" int32 (uint64 '*))
(define-goalkeeper-procedure (%gk-worker-fd worker out)
  "gk_worker_fd" int32 (uint64 '*))
(define-goalkeeper-procedure (%gk-worker-take-log worker buf cap len-out)
  "gk_worker_take_log" int32 (uint64 '* size_t '*))
(define-goalkeeper-procedure (%gk-outcome-name outcome)
  "gk_outcome_name" '* (uint32))

;;;
;;; Diagnostics log records.
;;;

(define-goalkeeper-procedure (%gk-worker-take-log-records worker out cap
                                                          n-out)
  "gk_worker_take_log_records" int32 (uint64 '* size_t '*))
(define-goalkeeper-procedure (%gk-log-kind-name kind)
  "gk_log_kind_name" '* (uint32))

;;; ffi.scm ends here
