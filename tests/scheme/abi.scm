;;; goalkeeper --- store path locks and a goal scheduler
;;; Copyright © 2025 The goalkeeper authors
;;;
;;; This file is part of goalkeeper.
;;;
;;; goalkeeper is free software; you can redistribute it and/or modify it
;;; under the terms of the GNU General Public License as published by
;;; the Free Software Foundation; either version 3 of the License, or (at
;;; your option) any later version.

(define-module (test-abi)
  #:use-module (goalkeeper abi)
  #:use-module (rnrs bytevectors)
  #:use-module (system foreign)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-64))

;;; The declarations of (goalkeeper abi), without the library: enum tables
;;; both ways, struct layouts by the C rules, and readers and writers that
;;; put each field where the layout says.  tests/scheme_abi.rs compares the
;;; same declarations with include/goalkeeper.h.

;; A struct with every field type and every kind of padding.
(define-c-struct %mixed "mixed"
  read-mixed
  write-mixed!
  (small   uint8)                                 ;0
  (flag    bool)                                  ;1
  (count   uint32)                                ;4
  (big     int64)                                 ;8
  (signed  int32)                                 ;16
  (length  size_t)                                ;24
  (address pointer)                               ;32
  (last    uint8))                                ;40, size 48

(define-c-enum %colour "colour" "COLOUR_"
  (red   1)
  (green 2)
  (sky-blue 7 "COLOUR_BLUE"))

(test-begin "abi")

(test-equal "offsets follow the C rules: each field at a multiple of its alignment"
  '((small . 0) (flag . 1) (count . 4) (big . 8) (signed . 16) (length . 24)
    (address . 32) (last . 40))
  (map (lambda (field) (cons (first field) (third field)))
       (c-struct-fields %mixed)))

(test-equal "the size is rounded up to the largest alignment"
  '(48 8)
  (list (c-struct-size %mixed) (c-struct-alignment %mixed)))

(test-equal "c-struct-field-offset"
  24 (c-struct-field-offset %mixed 'length))

(let ((bv (make-c-struct-bytevector %mixed)))
  (write-mixed! bv 0 255 'yes 4000000000 (- (expt 2 40)) -7 123456789
                (make-pointer #xdeadbeef) 9)
  (test-equal "the reader returns what the writer stored; a bool reads as #t/#f"
    (list 255 #t 4000000000 (- (expt 2 40)) -7 123456789 #xdeadbeef 9)
    (read-mixed bv 0 (lambda (small flag count big signed length address last)
                       (list small flag count big signed length
                             (pointer-address address) last))))
  (test-equal "…each field at its offset"
    (list 255 1 4000000000 -7 9)
    (list (bytevector-u8-ref bv 0) (bytevector-u8-ref bv 1)
          (bytevector-u32-native-ref bv 4) (bytevector-s32-native-ref bv 16)
          (bytevector-u8-ref bv 40)))
  (test-equal "…and padding is left alone"
    '(0 0 0)
    (list (bytevector-u8-ref bv 2) (bytevector-u8-ref bv 20)
          (bytevector-u8-ref bv 47)))
  (test-equal "c-struct->alist reads the same fields by name"
    '(255 #t -7 9)
    (let ((alist (c-struct->alist %mixed bv)))
      (map (lambda (field) (assq-ref alist field)) '(small flag signed last)))))

(let ((bv (make-bytevector 100 #xff)))
  (write-mixed! bv 52 1 #f 2 3 4 5 %null-pointer 6)
  (test-equal "readers and writers work at an offset, for arrays of structs"
    '(1 #f 2 3 4 5 0 6)
    (read-mixed bv 52 (lambda (small flag count big signed length address last)
                        (list small flag count big signed length
                              (pointer-address address) last))))
  (test-equal "…without touching the bytes before"
    #xff (bytevector-u8-ref bv 51)))

(test-equal "enum symbol -> value"
  '(1 2 7 #f)
  (map (lambda (s) (c-enum-value %colour s)) '(red green sky-blue purple)))

(test-equal "enum value -> symbol, with a default for unknown values"
  '(red sky-blue #f unknown)
  (list (c-enum-symbol %colour 1) (c-enum-symbol %colour 7)
        (c-enum-symbol %colour 3) (c-enum-symbol %colour 3 'unknown)))

(test-equal "enum constants are named after the prefix, or explicitly"
  '(("COLOUR_RED" 1) ("COLOUR_GREEN" 2) ("COLOUR_BLUE" 7))
  (map (lambda (entry) (list (third entry) (second entry)))
       (c-enum-entries %colour)))

(test-equal "the symbols, in declaration order"
  '(red green sky-blue)
  (c-enum-symbols %colour))

(test-assert "two symbols for one value are refused"
  (not (false-if-exception
        (eval '(define-c-enum %twice "twice" "T_" (a 1) (b 1))
              (resolve-module '(test-abi))))))

(test-equal "the library's enums: statuses, outcomes, event kinds"
  '(buffer-too-small 3 wait invariant-violation)
  (list (c-enum-symbol %gk-status 15) (c-enum-value %gk-outcome 'already-valid)
        (c-enum-symbol %gk-event-kind 3)
        (c-enum-symbol %gk-status 30)))

(test-equal "the library's structs: gk_event and gk_audit"
  '(40 144 8)
  (list (c-struct-size %gk-event) (c-struct-size %gk-audit)
        (c-struct-field-offset %gk-event 'goal)))

(test-assert "abi-description lists every declared enum and struct"
  (let ((description (abi-description)))
    (and (= (length description) (+ (length %abi-enums) (length %abi-structs)))
         (assoc-ref (map cdr description) "gk_status")
         (member '("timeout_ms" "int64_t" 32 8)
                 (assoc-ref (map cdr description) "gk_event")))))

(test-end "abi")
