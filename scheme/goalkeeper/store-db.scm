;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (goalkeeper store-db)
  #:use-module (goalkeeper ffi)
  #:use-module (system foreign)
  #:use-module (rnrs bytevectors)
  #:export (store-path-valid?))

;;; Commentary:
;;;
;;; The store's database, read-only.  In Guix and Nix a store path is valid
;;; when it is registered in the store's SQLite database (table ValidPaths
;;; of /var/guix/db/db.sqlite or /nix/var/nix/db/db.sqlite); that a file
;;; exists at the path is not enough, since a build without a chroot writes
;;; its output in place long before it is registered.  A worker takes its
;;; validity from the database with #:store-database (see (goalkeeper
;;; scheduler)); 'store-path-valid?' asks it once.
;;;
;;; Code:

(define-goalkeeper-procedure (%gk-store-path-valid db-path store-path out)
  "gk_store_path_valid" int32 ('* '* '*))

(define (check-file-name name what origin)
  "Raise a &goalkeeper-error naming ORIGIN unless NAME, described as WHAT,
is a string without NUL characters."
  (unless (string? name)
    (raise-goalkeeper-error 'invalid-argument
                            (format #f "~a ~s is not a string" what name)
                            origin))
  (when (string-index name #\nul)
    (raise-goalkeeper-error 'invalid-path
                            (format #f "~a ~s contains a NUL character"
                                    what name)
                            origin)))

(define (store-path-valid? db-file path)
  "Return #t if PATH, an absolute store path such as
\"/gnu/store/…-hello-2.12\", is registered in the ValidPaths table of the
store database DB-FILE (absolute, such as \"/var/guix/db/db.sqlite\"), #f
if it is not.  The database is opened read-only, asked, and closed; it is
never written.

Any failure raises a &goalkeeper-error whose status names the case and
whose message names the file: 'invalid-path (a relative file name or store
path), 'store-db-missing, 'store-db-not-sqlite (not an SQLite database, or
not a regular file), 'store-db-no-valid-paths (not a Nix or Guix store
database), 'store-db-locked (a writer held it longer than the 5 s busy
timeout), 'store-db-unreadable (permissions), 'store-db (anything else,
such as a corrupt file).  An error is never an answer."
  (check-file-name db-file "store database" 'store-path-valid?)
  (check-file-name path "store path" 'store-path-valid?)
  (let ((out (make-bytevector 1 0)))
    (check-status (%gk-store-path-valid (string->pointer db-file "UTF-8")
                                        (string->pointer path "UTF-8")
                                        (bytevector->pointer out))
                  'store-path-valid?)
    (not (zero? (bytevector-u8-ref out 0)))))

;;; store-db.scm ends here
