;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-library)
  #:use-module (goalkeeper)
  #:use-module (gk-test)
  #:use-module (ice-9 match)
  #:use-module (ice-9 popen)
  #:use-module (ice-9 rdelim)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-11)
  #:use-module (srfi srfi-64))

;;; Finding and loading libgoalkeeper: GOALKEEPER_LIBRARY pointing at a
;;; missing file, at something that is not a library, at a library of the
;;; wrong ABI version, and at an older library that lacks a function.  Each
;;; case runs in a fresh Guile process, since a process loads the library
;;; once.

(define %guile
  ;; The Guile to run; tests/scheme.rs sets GUILE.
  (or (getenv "GUILE") "guile"))

(define %real-library
  (getenv "GOALKEEPER_LIBRARY"))

(define %abi
  ;; The ABI version the bindings expect (and the real library has).
  (@ (goalkeeper ffi) %goalkeeper-abi-version))

(define* (probe library expression
                #:key (load-path (getenv "GUILE_LOAD_PATH"))
                (linker-path #f))
  "Run EXPRESSION in a fresh Guile that uses (goalkeeper), with
GOALKEEPER_LIBRARY set to LIBRARY (unset if LIBRARY is #f), GUILE_LOAD_PATH
set to LOAD-PATH (the compiled modules come from GUILE_LOAD_COMPILED_PATH,
so LOAD-PATH need not contain their sources) and LD_LIBRARY_PATH set to
LINKER-PATH (unset if #f).  Return (ok VALUE), (error STATUS MESSAGE) for a
&goalkeeper-error, or (other TEXT)."
  (let* ((program
          (object->string
           `(begin
              (use-modules (goalkeeper) (ice-9 exceptions))
              (write
               (with-exception-handler
                   (lambda (e)
                     (if (goalkeeper-error? e)
                         (list 'error (goalkeeper-error-status e)
                               (goalkeeper-error-message e))
                         (list 'other (object->string e))))
                 (lambda () (list 'ok ,expression))
                 #:unwind? #t)))))
         ;; env(1) takes its -u options before its assignments.
         (env  `("env"
                 ,@(if library '() '("-u" "GOALKEEPER_LIBRARY"))
                 ,@(if linker-path '() '("-u" "LD_LIBRARY_PATH"))
                 ,@(if library
                       (list (string-append "GOALKEEPER_LIBRARY=" library))
                       '())
                 ,@(if linker-path
                       (list (string-append "LD_LIBRARY_PATH=" linker-path))
                       '())
                 ,(string-append "GUILE_LOAD_PATH=" load-path)))
         (pipe (apply open-pipe* OPEN_READ
                      (append env (list %guile "--no-auto-compile"
                                        "-c" program))))
         (text (read-string pipe)))
    (close-pipe pipe)
    (call-with-input-string text read)))

(define (make-config-directory directory name library)
  "Create DIRECTORY/NAME/goalkeeper/config.scm, as 'make install' would,
recording LIBRARY; return DIRECTORY/NAME, for GUILE_LOAD_PATH."
  (let ((root (string-append directory "/" name)))
    (mkdir root)
    (mkdir (string-append root "/goalkeeper"))
    (call-with-output-file (string-append root "/goalkeeper/config.scm")
      (lambda (port)
        (write '(define-module (goalkeeper config)
                  #:export (%goalkeeper-library))
               port)
        (write `(define %goalkeeper-library ,library) port)))
    root))

(define (probe-error library expression . options)
  "Return (STATUS MESSAGE) of the &goalkeeper-error raised by EXPRESSION
under LIBRARY, or (unexpected RESULT)."
  (match (apply probe library expression options)
    (('error status message) (list status message))
    (result (list 'unexpected (object->string result)))))

(define %fake-library-source "
/* A stand-in for libgoalkeeper with a chosen ABI version.  */
unsigned int gk_abi_version (void) { return ABI; }
const char *gk_version (void) { return \"0.0.1-fake\"; }
int gk_held_count (unsigned long *out) { *out = 42; return 0; }
")

(define (compile-fake-library directory name abi)
  "Compile a shared object exporting gk_abi_version () = ABI; return its
file name."
  (let ((source (string-append directory "/fake.c"))
        (output (string-append directory "/" name)))
    (call-with-output-file source
      (lambda (port) (display %fake-library-source port)))
    (unless (zero? (system* (or (getenv "CC") "cc") "-shared" "-fPIC"
                            (string-append "-DABI=" (number->string abi))
                            "-o" output source))
      (error "could not compile" output))
    output))

(define (interface-bindings interface)
  "The (NAME . VARIABLE) pairs INTERFACE exports, including those it
re-exports by using other interfaces, as (goalkeeper) does."
  (append (module-map cons interface)
          (append-map interface-bindings (module-uses interface))))

(define (undocumented-exports module)
  "Return the names of the procedures exported by MODULE that have no
docstring, and the number of procedures checked."
  (let ((procedures (filter-map (match-lambda
                                  ((name . variable)
                                   (and (variable-bound? variable)
                                        (procedure? (variable-ref variable))
                                        (cons name (variable-ref variable)))))
                                (interface-bindings
                                 (resolve-interface module)))))
    (values (filter-map (match-lambda
                          ((name . procedure)
                           (and (not (procedure-documentation procedure))
                                name)))
                        procedures)
            (length procedures))))

(test-begin "library")

(let-values (((undocumented checked) (undocumented-exports '(goalkeeper))))
  (test-equal "every procedure exported by (goalkeeper) has a docstring"
    '()
    undocumented)
  (test-assert "…and there are many of them"
    (> checked 30)))

(test-equal "…and so does every one of (goalkeeper ffi)"
  '()
  (call-with-values (lambda () (undocumented-exports '(goalkeeper ffi)))
    (lambda (undocumented checked) undocumented)))

(test-assert "(goalkeeper) exports the lock and scheduler APIs"
  (every (lambda (name)
           (assq name (interface-bindings (resolve-interface '(goalkeeper)))))
         '(lock-paths lockset-release! lockset-delete-on-release!
           call-with-path-locks with-path-locks path-locked-by-me?
           make-worker worker-add-goal! worker-next-event worker-report!
           worker-cancel! worker-audit run-worker
           &goalkeeper-error goalkeeper-error? goalkeeper-error-status
           goalkeeper-error-message)))

(call-with-temporary-store
 (lambda (directory)
   (define missing (string-append directory "/does-not-exist.so"))
   (define not-elf (string-append directory "/not-a-library.so"))
   (define wrong-abi (compile-fake-library directory "libwrong.so" 999))
   (define older (compile-fake-library directory "libolder.so" %abi))

   (call-with-output-file not-elf
     (lambda (port)
       (display (make-string 200 #\x) port)))

   (test-equal "the real library loads through GOALKEEPER_LIBRARY"
     `(ok (,%abi ,%real-library))
     (probe %real-library
            '(list (goalkeeper-abi-version) (goalkeeper-library-file))))

   (test-assert "its version is a dotted version string"
     (match (probe %real-library '(goalkeeper-version))
       (('ok (? string? version))
        (= 3 (length (string-split version #\.))))
       (_ #f)))

   (match (probe-error missing '(held-path-count))
     ((status message)
      (test-equal "a missing file: the modules load, the first call raises"
        'library-not-found
        status)
      (test-assert "…naming the file and where it came from"
        (and (string-contains message missing)
             (string-contains message "GOALKEEPER_LIBRARY")))
      (test-assert "…and the ABI version expected"
        (string-contains message
                         (format #f "ABI version ~a expected" %abi)))
      (test-assert "…without falling back to another copy of the library"
        (not (string-contains message "dynamic linker")))))

   (match (probe-error not-elf '(held-path-count))
     ((status message)
      (test-equal "a file that is not a library is not found"
        'library-not-found
        status)
      (test-assert "…with the dynamic loader's reason"
        (and (string-contains message not-elf)
             (string-contains message "invalid ELF header")))))

   (match (probe-error wrong-abi '(held-path-count))
     ((status message)
      (test-equal "a library of the wrong ABI version is refused"
        'abi-mismatch
        status)
      (test-assert "…naming the file, the version found and the one expected"
        (and (string-contains message wrong-abi)
             (string-contains message "ABI version 999")
             (string-contains message
                              (format #f "expect ABI version ~a" %abi))))))

   (test-equal "goalkeeper-abi-version raises the same error"
     'abi-mismatch
     (car (probe-error wrong-abi '(goalkeeper-abi-version))))

   (test-equal "an older library: what it exports works"
     '(ok 42)
     (probe older '(held-path-count)))

   (match (probe-error older '(lock-paths (list "/gk-test/x")))
     ((status message)
      (test-equal "…and a function it lacks fails when called, not at load"
        'missing-symbol
        status)
      (test-assert "…naming the function and the library's version"
        (and (string-contains message "gk_lockset_acquire_packed")
             (string-contains message "0.0.1-fake")))))

   (test-equal "an error other than a missing symbol while binding a function is raised as it is"
     'wrong-type-arg                    ;e.g. an async's exception (Ctrl-C)
     (catch #t
       (lambda ()
         ((@@ (goalkeeper ffi) library-procedure) "gk_version" '* '(no-such-type))
         'taken-for-a-missing-symbol)
       (lambda (key . _) key)))

   ;; The lookup order: GOALKEEPER_LIBRARY, then the path substituted
   ;; into (goalkeeper config), then the dynamic linker.
   (let ((configured (make-config-directory directory "configured"
                                            %real-library))
         (stale      (make-config-directory directory "stale" missing))
         (linker     (dirname %real-library)))
     (test-equal "without GOALKEEPER_LIBRARY, the configured path is used"
       `(ok ,%real-library)
       (probe #f '(goalkeeper-library-file) #:load-path configured))

     (test-equal "GOALKEEPER_LIBRARY comes before the configured path"
       `(ok ,%real-library)
       (probe %real-library '(goalkeeper-library-file) #:load-path stale))

     (test-assert "a configured path that is gone falls back to the dynamic linker"
       (match (probe #f '(goalkeeper-library-file)
                     #:load-path stale #:linker-path linker)
         (('ok file) (string-prefix? "libgoalkeeper" file))
         (_ #f)))

     (test-assert "without a (goalkeeper config), the dynamic linker finds it"
       (match (probe #f '(goalkeeper-abi-version)
                     #:load-path "" #:linker-path linker)
         (('ok abi) (= abi %abi))
         (_ #f)))

     (match (probe-error #f '(held-path-count) #:load-path stale)
       ((status message)
        (test-equal "when nothing fits, the library is not found"
          'library-not-found
          status)
        (test-assert "…and the one error names every candidate tried, in order"
          (let ((configured (string-contains message missing))
                (by-name    (string-contains message
                                             "libgoalkeeper.so.0 (the dynamic linker)")))
            (and configured by-name (< configured by-name)
                 (string-contains message "(the installed library)")))))))))

(test-end "library")
