# goalkeeper: build, test, install.
#
#   make            build the release library (and its soname link
#                   target/release/libgoalkeeper.so.0) and the Guile modules
#   make check      run every test suite (Rust, C, C++, Scheme): one line per
#                   suite, then the total; ARGS go to cargo test
#   make check-sanitize  the C programs under valgrind, the C++ suites with AddressSanitizer
#   make soak       fault-injection soak (1000 multi-process runs) + 100,000 ABI fuzz cases
#   make miri       the library's unit tests under Miri (nightly)
#   make demo       run the #31785 demonstration (demo/31785.scm); ARGS=--legacy-hold
#                   shows the invariant check catching the old daemon's lock lifetime,
#                   ARGS=--exists-validity a waiter taking a half-built output
#   make install    install under PREFIX (default /usr/local)
#   make header     regenerate include/goalkeeper.h with cbindgen
#   make bench      run the benchmarks (prints a table, writes target/bench/results.json)
#   make bench-table  render README.md's performance table from target/bench/results.json
#
# make demo, make check and make check-sanitize first install the system
# packages they need (the list is build-aux/deps) with apt-get when run as
# root, or say which command to run; ENSURE_DEPS=no skips that step.

CARGO      ?= cargo
PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR    ?=

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))
RELEASE_LIB := target/release/libgoalkeeper.so

.PHONY: all build check check-sanitize check-valgrind miri soak header demo demo-run install uninstall clean bench bench-table

all: build

# The soname link lets a program linked with -lgoalkeeper against the build
# tree start (./pre-inst-env sets LD_LIBRARY_PATH to target/release).
build:
	$(CARGO) build --release --workspace
	ln -sf libgoalkeeper.so $(RELEASE_LIB).$(MAJOR)

# build-aux/check runs `cargo test --workspace --no-fail-fast $(ARGS)` and prints one line
# per suite (each test binary, SRFI-64 file, C and C++ program) and a total.
check:
	@build-aux/ensure-deps check
	@CARGO='$(CARGO)' build-aux/check $(ARGS)

# The C++ programs of tests/cxx built with -fsanitize=address (ASan + LSan);
# any report fails. The Rust library is not instrumented (see tests/cxx.rs).
# The C programs run under valgrind memcheck (check-valgrind).
check-sanitize: check-valgrind
	@build-aux/ensure-deps check
	GOALKEEPER_SANITIZE=address $(CARGO) test --test cxx

# The C test programs (tests/c) under valgrind's memcheck: any invalid
# access, use of uninitialised memory, or definite/indirect leak fails.
VALGRIND_TESTS ?= c_abi_misuse c_abi_locks sched_c
check-valgrind:
	@build-aux/ensure-deps check
	GOALKEEPER_VALGRIND=1 $(CARGO) test $(addprefix --test ,$(VALGRIND_TESTS)) -- --nocapture

# The long fault-injection soak and ABI fuzz (issue 6; a short run of each is
# part of `make check`). ARGS go to the soak (tests/soak.rs): --runs N or
# --duration SECS|Nm, --jobs J, --seed HEX, --run-seed HEX (default: --runs
# 1000); FUZZ_CASES and FUZZ_WORKER_CASES set the ABI fuzz cases (lock
# sets, workers; the store database functions get a quarter of FUZZ_CASES). Debug build: the fault hooks
# (ENOSPC, crash inside a release) exist only there.
FUZZ_CASES ?= 100000
FUZZ_WORKER_CASES ?= 20000
soak:
	@mkdir -p target
	GOALKEEPER_FUZZ_CASES=$(FUZZ_CASES) GOALKEEPER_FUZZ_WORKER_CASES=$(FUZZ_WORKER_CASES) \
	  $(CARGO) test --test abi_fuzz -- --nocapture > target/soak-fuzz.log 2>&1 || { cat target/soak-fuzz.log; exit 1; }
	@grep '^abi_fuzz' target/soak-fuzz.log | cut -c1-300
	$(CARGO) test --test soak -- $(if $(ARGS),$(ARGS),--runs 1000) --fuzz-summary target/soak-fuzz.log

# The library's unit tests under Miri (nightly toolchain with the miri and
# rust-src components): the handle table, argument checking, string and
# array conversion, the panic boundary, a worker over plain goals through the
# C ABI, and the flock lock cycle (file I/O needs -Zmiri-disable-isolation).
# Miri implements neither OFD locks (fcntl F_OFD_SETLK) nor fork: a unit
# test that needs them must be #[cfg_attr(miri, ignore)].
# Tests whose sizes make them take minutes under Miri are scaled down or
# ignored there (cfg!(miri)); the whole run takes a few minutes, and
# MIRI_TIMEOUT turns a regression into a failure that says so instead of a
# CI run that never ends.
MIRIFLAGS ?= -Zmiri-disable-isolation
MIRI_TIMEOUT ?= 1200
miri:
	@MIRIFLAGS="$(MIRIFLAGS)" timeout $(MIRI_TIMEOUT) $(CARGO) +nightly miri test --lib; st=$$?; \
	if [ $$st = 124 ]; then echo "make miri: not finished after $(MIRI_TIMEOUT) s; a test too big for Miri needs cfg!(miri) sizes"; fi; \
	exit $$st

header:
	GOALKEEPER_UPDATE_HEADER=1 $(CARGO) test --test header

bench: build
	$(CARGO) bench --bench gk

bench-table:
	$(CARGO) bench --bench gk -- --table

# Guix bug #31785 replayed: three Guile clients, overlapping builds, max-jobs 1,
# on a fresh temporary store with its database (db.sqlite, written through
# the libsqlite3 that the library links: no other package), against the
# build tree and the release library (pre-inst-env sets GOALKEEPER_LIBRARY).
# The two-process lock hand-off of the first version is
# `cargo run --example handoff`.
# The demo's library is built apart (target/demo), with the legacy-hold
# feature that ARGS=--legacy-hold needs; the production library in
# target/release never has it.  The packages come first, then a new make,
# which sees the guild they installed.
DEMO_LIB := target/demo/release/libgoalkeeper.so
demo:
	@build-aux/ensure-deps demo
	@$(MAKE) --no-print-directory demo-run

demo-run: guile
	$(CARGO) build --release --lib --features legacy-hold --target-dir target/demo
	GOALKEEPER_LIBRARY=$(CURDIR)/$(DEMO_LIB) ./pre-inst-env $(GUILE) --no-auto-compile demo/31785.scm $(ARGS)

install: build
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 0755 $(RELEASE_LIB) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(VERSION)
	ln -sf libgoalkeeper.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(MAJOR)
	ln -sf libgoalkeeper.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so
	install -m 0644 include/goalkeeper.h $(DESTDIR)$(INCLUDEDIR)/goalkeeper.h
	install -m 0644 include/goalkeeper.hpp include/goalkeeper-pathlocks.hh $(DESTDIR)$(INCLUDEDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    goalkeeper.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/goalkeeper.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libgoalkeeper.so $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(MAJOR) \
	      $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(VERSION) $(DESTDIR)$(INCLUDEDIR)/goalkeeper.h \
	      $(DESTDIR)$(INCLUDEDIR)/goalkeeper.hpp $(DESTDIR)$(INCLUDEDIR)/goalkeeper-pathlocks.hh \
	      $(DESTDIR)$(PKGCONFIGDIR)/goalkeeper.pc

clean:
	$(CARGO) clean

# ---------------------------------------------------------------------------
# Guile bindings (scheme/).  'make' compiles the modules into target/guile and
# writes pre-inst-env and the build tree's (goalkeeper config); 'make install'
# installs the .scm files under Guile's site directory and the .go files
# under its site-ccache directory.  Under a PREFIX other than Guile's own,
# the same layout is used below PREFIX (then add it to GUILE_LOAD_PATH and
# GUILE_LOAD_COMPILED_PATH); GUILE_SITE_DIR and GUILE_SITE_CCACHE_DIR
# override both.  Without guild, the bindings are skipped with a note.

GUILE ?= guile
GUILD ?= guild
GUILD_WARNINGS = -Wunbound-variable -Warity-mismatch -Wformat
GUILE_PREFIX = $(shell $(GUILE) -c "(display (assq-ref %guile-build-info 'prefix))" 2>/dev/null)
GUILE_SITE_DIR ?= $(patsubst $(GUILE_PREFIX)/%,$(PREFIX)/%,$(shell $(GUILE) -c '(display (%site-dir))' 2>/dev/null))
GUILE_SITE_CCACHE_DIR ?= $(patsubst $(GUILE_PREFIX)/%,$(PREFIX)/%,$(shell $(GUILE) -c '(display (%site-ccache-dir))' 2>/dev/null))

GUILE_MODULES = goalkeeper.scm goalkeeper/abi.scm goalkeeper/ffi.scm goalkeeper/locks.scm \
  goalkeeper/scheduler.scm goalkeeper/store-db.scm
GUILE_GO_DIR = target/guile
GUILE_GO = $(GUILE_MODULES:%.scm=$(GUILE_GO_DIR)/%.go) $(GUILE_GO_DIR)/goalkeeper/config.go
GUILE_INSTALL_STAGE = target/guile-install

.PHONY: guile install-guile uninstall-guile clean-guile no-guile-note print-guile-dirs

ifneq ($(shell command -v $(GUILD) 2>/dev/null),)
all: guile
install: install-guile
else
all install: no-guile-note
endif
uninstall: uninstall-guile
clean: clean-guile

no-guile-note:
	@echo "note: $(GUILD) not found; the Guile bindings are not built or installed"

guile: pre-inst-env scheme/goalkeeper/config.scm $(GUILE_GO)

# Compile one module; any warning is an error.
$(GUILE_GO_DIR)/%.go: scheme/%.scm
	@mkdir -p $(@D)
	@echo "  GUILEC   $<"
	@GUILE_AUTO_COMPILE=0 GUILE_LOAD_COMPILED_PATH=$(GUILE_GO_DIR) \
	  $(GUILD) compile $(GUILD_WARNINGS) -L scheme -o $@ $< 2> $@.log; \
	  status=$$?; cat $@.log >&2; \
	  if [ $$status -ne 0 ] || grep -q warning $@.log; then rm -f $@ $@.log; exit 1; fi; \
	  rm -f $@.log

# Modules are compiled after those they use: (goalkeeper ffi)'s macros are
# expanded into its users, and so are (goalkeeper abi)'s.
$(GUILE_GO_DIR)/goalkeeper/ffi.go: $(GUILE_GO_DIR)/goalkeeper/abi.go
$(GUILE_GO_DIR)/goalkeeper/locks.go: $(GUILE_GO_DIR)/goalkeeper/ffi.go
$(GUILE_GO_DIR)/goalkeeper/scheduler.go: $(GUILE_GO_DIR)/goalkeeper/locks.go
$(GUILE_GO_DIR)/goalkeeper/store-db.go: $(GUILE_GO_DIR)/goalkeeper/ffi.go
$(GUILE_GO_DIR)/goalkeeper.go: $(GUILE_GO_DIR)/goalkeeper/scheduler.go \
  $(GUILE_GO_DIR)/goalkeeper/store-db.go

# The build tree's configuration: the library 'make' builds.
scheme/goalkeeper/config.scm: scheme/goalkeeper/config.scm.in Makefile
	sed -e 's|@GOALKEEPER_LIBRARY@|$(CURDIR)/$(RELEASE_LIB)|' $< > $@

pre-inst-env: pre-inst-env.in Makefile
	sed -e 's|@abs_top_srcdir@|$(CURDIR)|' -e 's|@RELEASE_LIB@|$(RELEASE_LIB)|' $< > $@
	chmod +x $@

install-guile: guile
	install -d $(GUILE_INSTALL_STAGE)/goalkeeper \
	  $(DESTDIR)$(GUILE_SITE_DIR)/goalkeeper $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/goalkeeper
	sed -e 's|@GOALKEEPER_LIBRARY@|$(LIBDIR)/libgoalkeeper.so.$(MAJOR)|' \
	  scheme/goalkeeper/config.scm.in > $(GUILE_INSTALL_STAGE)/goalkeeper/config.scm
	GUILE_AUTO_COMPILE=0 $(GUILD) compile $(GUILD_WARNINGS) \
	  -o $(GUILE_INSTALL_STAGE)/goalkeeper/config.go $(GUILE_INSTALL_STAGE)/goalkeeper/config.scm
	install -m 0644 scheme/goalkeeper.scm $(DESTDIR)$(GUILE_SITE_DIR)/
	install -m 0644 scheme/goalkeeper/abi.scm scheme/goalkeeper/ffi.scm scheme/goalkeeper/locks.scm \
	  scheme/goalkeeper/scheduler.scm scheme/goalkeeper/store-db.scm \
	  $(GUILE_INSTALL_STAGE)/goalkeeper/config.scm \
	  $(DESTDIR)$(GUILE_SITE_DIR)/goalkeeper/
	install -m 0644 $(GUILE_GO_DIR)/goalkeeper.go $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/
	install -m 0644 $(GUILE_GO_DIR)/goalkeeper/abi.go $(GUILE_GO_DIR)/goalkeeper/ffi.go \
	  $(GUILE_GO_DIR)/goalkeeper/locks.go $(GUILE_GO_DIR)/goalkeeper/scheduler.go \
	  $(GUILE_GO_DIR)/goalkeeper/store-db.go $(GUILE_INSTALL_STAGE)/goalkeeper/config.go \
	  $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/goalkeeper/

uninstall-guile:
	rm -f $(DESTDIR)$(GUILE_SITE_DIR)/goalkeeper.scm $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/goalkeeper.go
	rm -f $(addprefix $(DESTDIR)$(GUILE_SITE_DIR)/goalkeeper/,abi.scm ffi.scm locks.scm scheduler.scm store-db.scm config.scm)
	rm -f $(addprefix $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/goalkeeper/,abi.go ffi.go locks.go scheduler.go store-db.go config.go)
	-rmdir $(DESTDIR)$(GUILE_SITE_DIR)/goalkeeper $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/goalkeeper 2>/dev/null

# For scripts: the two install directories, separated by a space.
print-guile-dirs:
	@echo $(GUILE_SITE_DIR) $(GUILE_SITE_CCACHE_DIR)

clean-guile:
	rm -f scheme/goalkeeper/config.scm pre-inst-env
