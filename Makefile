# goalkeeper: build, test, install.
#
#   make            build the release library (and its soname link
#                   target/release/libgoalkeeper.so.0) and the Guile modules
#   make check      run every test suite (Rust, C, C++, Scheme): one line per
#                   suite, then the total; ARGS go to cargo test
#   make check-sanitize  the C programs under valgrind, the C++ suites with AddressSanitizer
#   make check-guix-daemon GUIX_SRC=DIR  goalkeeper inside the real guix-daemon (as root):
#                   builds it migrated and unmodified from a Guix checkout, runs the
#                   scenarios of doc/migrating-guix-daemon.md; RUNS=N, BASELINES=yes
#   make soak       fault-injection soak (1000 multi-process runs) + 100,000 ABI fuzz cases
#   make miri       the library's unit tests and tests/c_abi_boundary.rs under Miri (nightly)
#   make demo       run the #31785 demonstration (demo/31785.scm); ARGS=--legacy-hold
#                   shows the invariant check catching the old daemon's lock lifetime
#   make check-install  install into a temporary prefix and build and run the
#                   README's examples from it (C, C++ with pkg-config and CMake, Guile, the CLI)
#   make install    install under PREFIX (default /usr/local): bin/goalkeeper and its
#                   man pages, the library, headers, goalkeeper.pc, the CMake package,
#                   the Guile modules (see below); make uninstall removes them
#   make header     regenerate include/goalkeeper.h with cbindgen
#   make bench      run the benchmarks (prints a table, writes target/bench/results.json)
#   make bench-table  write doc/performance.md's table from target/bench/results.json
#
# make demo, make check and make check-sanitize first install the system
# packages they need (the list is build-aux/deps) with apt-get when run as
# root, or say which command to run; ENSURE_DEPS=no skips that step.

CARGO      ?= cargo
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR     ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
CMAKEDIR   ?= $(LIBDIR)/cmake/goalkeeper
DESTDIR    ?=

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))
MINOR   := $(word 2,$(subst ., ,$(VERSION)))
RELEASE_LIB := target/release/libgoalkeeper.so

.PHONY: all build man check check-install check-sanitize check-valgrind check-guix-daemon miri soak header demo demo-run install uninstall clean bench bench-table

all: build

# The soname link lets a program linked with -lgoalkeeper against the build
# tree start (./pre-inst-env sets LD_LIBRARY_PATH to target/release).
build:
	$(CARGO) build --release --workspace
	ln -sf libgoalkeeper.so $(RELEASE_LIB).$(MAJOR)

# The man pages, made by the goalkeeper command from its own definitions.
MAN_PAGES_DIR = target/man
man: build
	rm -rf $(MAN_PAGES_DIR) && mkdir -p $(MAN_PAGES_DIR)
	target/release/goalkeeper man-pages $(MAN_PAGES_DIR)

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

# guix-daemon migrated to goalkeeper (build-aux/guix-daemon-edit) and
# unmodified, built from GUIX_SRC (a Guix checkout, or any tree with nix/)
# with the harness in GUIX_DAEMON_HARNESS (default ../shared/guix-daemon),
# then the scenarios and their checks (build-aux/check-guix-daemon). Without
# GUIX_SRC it says it skipped, and why.
check-guix-daemon:
	@GUIX_SRC='$(GUIX_SRC)' RUNS='$(RUNS)' BASELINES='$(BASELINES)' \
	  GUIX_DAEMON_HARNESS='$(GUIX_DAEMON_HARNESS)' MAKE='$(MAKE)' build-aux/check-guix-daemon

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
# sets, workers; the store database functions get a quarter of FUZZ_CASES). The fault hooks
# (ENOSPC, crash inside a release) exist only with the fault-injection feature,
# which the tests' build enables and the release library never has.
FUZZ_CASES ?= 100000
FUZZ_WORKER_CASES ?= 20000
soak:
	@mkdir -p target
	GOALKEEPER_FUZZ_CASES=$(FUZZ_CASES) GOALKEEPER_FUZZ_WORKER_CASES=$(FUZZ_WORKER_CASES) \
	  $(CARGO) test --test abi_fuzz -- --nocapture > target/soak-fuzz.log 2>&1 || { cat target/soak-fuzz.log; exit 1; }
	@grep '^abi_fuzz' target/soak-fuzz.log | cut -c1-300
	$(CARGO) test --test soak -- $(if $(ARGS),$(ARGS),--runs 1000) --fuzz-summary target/soak-fuzz.log

# The library's unit tests and tests/c_abi_boundary.rs under Miri (nightly
# toolchain with the miri and rust-src components): the handle table,
# argument checking, string and array conversion, the panic boundary, every
# exported function's argument checks, a worker over plain goals through the
# C ABI, and the flock lock cycle (file I/O needs -Zmiri-disable-isolation).
# Miri implements neither OFD locks (fcntl F_OFD_SETLK) nor fork: a test
# that needs them must be #[cfg_attr(miri, ignore)].
# Tests whose sizes make them take minutes under Miri are scaled down or
# ignored there (cfg!(miri)); the whole run takes a few minutes, and
# MIRI_TIMEOUT turns a regression into a failure that says so instead of a
# CI run that never ends.
MIRIFLAGS ?= -Zmiri-disable-isolation
MIRI_TIMEOUT ?= 1200
miri:
	@MIRIFLAGS="$(MIRIFLAGS)" timeout $(MIRI_TIMEOUT) $(CARGO) +nightly miri test --lib --test c_abi_boundary; st=$$?; \
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
# The demo runs against the release library that 'make' builds, so that
# ./pre-inst-env works after it as after 'make'.  Only ARGS=--legacy-hold
# builds a library apart (target/demo), with the legacy-hold feature it
# needs: the production library in target/release never has it.  The
# packages come first, then a new make, which sees the guild they installed.
DEMO_LIB := target/demo/release/libgoalkeeper.so
demo:
	@build-aux/ensure-deps demo
	@$(MAKE) --no-print-directory demo-run

demo-run: build guile
ifneq ($(filter --legacy-hold,$(ARGS)),)
	$(CARGO) build --release --lib --features legacy-hold --target-dir target/demo
	GOALKEEPER_LIBRARY=$(CURDIR)/$(DEMO_LIB) ./pre-inst-env $(GUILE) --no-auto-compile demo/31785.scm $(ARGS)
else
	./pre-inst-env $(GUILE) --no-auto-compile demo/31785.scm $(ARGS)
endif

# Installed: bin/goalkeeper and its man pages; the library with its soname
# links; the headers; goalkeeper.pc (no rpath: run ldconfig, or see the
# note printed); the CMake package (find_package(goalkeeper) gives the
# imported target goalkeeper::goalkeeper); the Guile modules (install-guile,
# below). Paths in goalkeeper.pc and the CMake package are PREFIX's, not
# DESTDIR's.
SUBST = sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
  -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
  -e 's|@MAJOR@|$(MAJOR)|g' -e 's|@MINOR@|$(MINOR)|g'
install: build man
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(LIBDIR) \
	  $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(CMAKEDIR)
	install -m 0755 target/release/goalkeeper $(DESTDIR)$(BINDIR)/goalkeeper
	install -m 0644 $(MAN_PAGES_DIR)/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0755 $(RELEASE_LIB) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(VERSION)
	ln -sf libgoalkeeper.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(MAJOR)
	ln -sf libgoalkeeper.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so
	install -m 0644 include/goalkeeper.h include/goalkeeper.hpp include/goalkeeper-pathlocks.hh \
	  $(DESTDIR)$(INCLUDEDIR)/
	$(SUBST) goalkeeper.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/goalkeeper.pc
	$(SUBST) build-aux/goalkeeperConfig.cmake.in > $(DESTDIR)$(CMAKEDIR)/goalkeeperConfig.cmake
	$(SUBST) build-aux/goalkeeperConfigVersion.cmake.in > $(DESTDIR)$(CMAKEDIR)/goalkeeperConfigVersion.cmake
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi
	@if [ -z "$(DESTDIR)" ] && ! ldconfig -p 2>/dev/null | grep -q " => $(LIBDIR)/libgoalkeeper.so.$(MAJOR)$$"; then \
	  echo "note: $(LIBDIR) is not in the dynamic linker's cache: run programs linked with"; \
	  echo "  -lgoalkeeper with LD_LIBRARY_PATH=$(LIBDIR), or link them with -Wl,-rpath,$(LIBDIR)"; \
	  echo "  (CMake adds that rpath by itself; root can also add $(LIBDIR) to /etc/ld.so.conf.d/)"; \
	fi

# Installs into a temporary prefix and uses it as each kind of user would:
# C with pkg-config, C++ with pkg-config and CMake, Guile with the printed
# variables and (staged) under Guile's own prefix, the command, man -l, the
# README's examples; then make uninstall (build-aux/check-install).
check-install: build
	@build-aux/ensure-deps check
	build-aux/check-install

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/goalkeeper \
	      $(addprefix $(DESTDIR)$(MANDIR)/man1/,goalkeeper.1 goalkeeper-locks.1 goalkeeper-hold.1) \
	      $(DESTDIR)$(LIBDIR)/libgoalkeeper.so $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(MAJOR) \
	      $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(VERSION) $(DESTDIR)$(INCLUDEDIR)/goalkeeper.h \
	      $(DESTDIR)$(INCLUDEDIR)/goalkeeper.hpp $(DESTDIR)$(INCLUDEDIR)/goalkeeper-pathlocks.hh \
	      $(DESTDIR)$(PKGCONFIGDIR)/goalkeeper.pc $(DESTDIR)$(CMAKEDIR)/goalkeeperConfig.cmake \
	      $(DESTDIR)$(CMAKEDIR)/goalkeeperConfigVersion.cmake
	-rmdir $(DESTDIR)$(CMAKEDIR) 2>/dev/null

clean:
	$(CARGO) clean

# ---------------------------------------------------------------------------
# Guile bindings (scheme/).  'make' compiles the modules into target/guile and
# writes pre-inst-env and the build tree's (goalkeeper config); 'make install'
# installs the .scm files and the compiled .go files where Guile looks for
# them.  When PREFIX is Guile's own (pkg-config guile-3.0's prefix: /usr on
# Debian), those are pkg-config's sitedir and siteccachedir, which Guile
# searches by default.  Under another PREFIX (/usr/local, $HOME/.local) the
# same layout is used below PREFIX and LIBDIR, and 'make install' prints the
# GUILE_LOAD_PATH and GUILE_LOAD_COMPILED_PATH to set.  GUILE_SITE_DIR and
# GUILE_SITE_CCACHE_DIR override both.  Without guild, the bindings are
# skipped with a note.

GUILE ?= guile
GUILD ?= guild
GUILD_WARNINGS = -Wunbound-variable -Warity-mismatch -Wformat
GUILE_PKG_PREFIX := $(shell pkg-config --variable=prefix guile-3.0 2>/dev/null)
ifeq ($(PREFIX),$(GUILE_PKG_PREFIX))
GUILE_SITE_DIR ?= $(shell pkg-config --variable=sitedir guile-3.0)
GUILE_SITE_CCACHE_DIR ?= $(shell pkg-config --variable=siteccachedir guile-3.0)
else
GUILE_SITE_DIR ?= $(PREFIX)/share/guile/site/3.0
GUILE_SITE_CCACHE_DIR ?= $(LIBDIR)/guile/3.0/site-ccache
endif

GUILE_MODULES = goalkeeper.scm goalkeeper/abi.scm goalkeeper/ffi.scm goalkeeper/locks.scm \
  goalkeeper/scheduler.scm goalkeeper/store-db.scm goalkeeper/supervisor.scm
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
$(GUILE_GO_DIR)/goalkeeper/supervisor.go: $(GUILE_GO_DIR)/goalkeeper/scheduler.go
$(GUILE_GO_DIR)/goalkeeper.go: $(GUILE_GO_DIR)/goalkeeper/supervisor.go \
  $(GUILE_GO_DIR)/goalkeeper/store-db.go

# The build tree's configuration: the library 'make' builds.
scheme/goalkeeper/config.scm: scheme/goalkeeper/config.scm.in Makefile
	sed -e 's|@GOALKEEPER_LIBRARY@|$(CURDIR)/$(RELEASE_LIB)|' $< > $@

pre-inst-env: pre-inst-env.in Makefile
	sed -e 's|@abs_top_srcdir@|$(CURDIR)|' -e 's|@RELEASE_LIB@|$(RELEASE_LIB)|' $< > $@
	chmod +x $@

GUILE_SUBDIRS = $(sort $(filter-out .,$(dir $(GUILE_MODULES)))) goalkeeper/
install-guile: guile
	install -d $(GUILE_INSTALL_STAGE)/goalkeeper \
	  $(addprefix $(DESTDIR)$(GUILE_SITE_DIR)/,$(GUILE_SUBDIRS)) \
	  $(addprefix $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/,$(GUILE_SUBDIRS))
	sed -e 's|@GOALKEEPER_LIBRARY@|$(LIBDIR)/libgoalkeeper.so.$(MAJOR)|' \
	  scheme/goalkeeper/config.scm.in > $(GUILE_INSTALL_STAGE)/goalkeeper/config.scm
	GUILE_AUTO_COMPILE=0 $(GUILD) compile $(GUILD_WARNINGS) \
	  -o $(GUILE_INSTALL_STAGE)/goalkeeper/config.go $(GUILE_INSTALL_STAGE)/goalkeeper/config.scm
	for m in $(GUILE_MODULES); do \
	  install -m 0644 scheme/$$m $(DESTDIR)$(GUILE_SITE_DIR)/$$m && \
	  install -m 0644 $(GUILE_GO_DIR)/$${m%.scm}.go $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/$${m%.scm}.go \
	  || exit 1; \
	done
	install -m 0644 $(GUILE_INSTALL_STAGE)/goalkeeper/config.scm $(DESTDIR)$(GUILE_SITE_DIR)/goalkeeper/
	install -m 0644 $(GUILE_INSTALL_STAGE)/goalkeeper/config.go $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/goalkeeper/
	@if [ -z "$(DESTDIR)" ] && ! $(GUILE) -c '(exit (and (member "$(GUILE_SITE_DIR)" %load-path) (member "$(GUILE_SITE_CCACHE_DIR)" %load-compiled-path) #t))' 2>/dev/null; then \
	  echo "note: $(GUILE) does not look in $(GUILE_SITE_DIR) by default; to use (goalkeeper), set:"; \
	  echo '  export GUILE_LOAD_PATH="$(GUILE_SITE_DIR)$${GUILE_LOAD_PATH:+:$$GUILE_LOAD_PATH}"'; \
	  echo '  export GUILE_LOAD_COMPILED_PATH="$(GUILE_SITE_CCACHE_DIR)$${GUILE_LOAD_COMPILED_PATH:+:$$GUILE_LOAD_COMPILED_PATH}"'; \
	  echo "  (or install with PREFIX=$(GUILE_PKG_PREFIX), Guile's own prefix)"; \
	fi

uninstall-guile:
	rm -f $(addprefix $(DESTDIR)$(GUILE_SITE_DIR)/,$(GUILE_MODULES) goalkeeper/config.scm)
	rm -f $(addprefix $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/,$(GUILE_MODULES:.scm=.go) goalkeeper/config.go)
	-rmdir $(DESTDIR)$(GUILE_SITE_DIR)/goalkeeper $(DESTDIR)$(GUILE_SITE_CCACHE_DIR)/goalkeeper 2>/dev/null

# For scripts: the two install directories, separated by a space.
print-guile-dirs:
	@echo $(GUILE_SITE_DIR) $(GUILE_SITE_CCACHE_DIR)

clean-guile:
	rm -f scheme/goalkeeper/config.scm pre-inst-env
