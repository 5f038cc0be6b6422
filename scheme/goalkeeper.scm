;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (goalkeeper))

;;; Commentary:
;;;
;;; The public API of goalkeeper in one module: it re-exports the public
;;; interfaces of the modules listed below, as (guix) does for its own.
;;;
;;; Code:

(eval-when (expand load eval)
  (define %public-modules
    '((goalkeeper locks)
      (goalkeeper scheduler)
      (goalkeeper store-db)
      (goalkeeper supervisor)))

  (for-each (let ((interface (module-public-interface (current-module))))
              (lambda (name)
                (module-use! interface (resolve-interface name))))
            %public-modules))

;;; goalkeeper.scm ends here
