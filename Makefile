# goalkeeper: build, test, install.
#
#   make            build the release library
#   make check      run every test suite (Rust, C, C++, Scheme)
#   make demo       run the demonstration
#   make install    install under PREFIX (default /usr/local)
#   make header     regenerate include/goalkeeper.h with cbindgen

CARGO      ?= cargo
PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR    ?=

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))
RELEASE_LIB := target/release/libgoalkeeper.so

.PHONY: all build check header demo install uninstall clean

all: build

build:
	$(CARGO) build --release

check:
	$(CARGO) test

header:
	GOALKEEPER_UPDATE_HEADER=1 $(CARGO) test --test header

demo:
	$(CARGO) run --quiet --release --example handoff

install: build
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 0755 $(RELEASE_LIB) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(VERSION)
	ln -sf libgoalkeeper.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(MAJOR)
	ln -sf libgoalkeeper.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libgoalkeeper.so
	install -m 0644 include/goalkeeper.h $(DESTDIR)$(INCLUDEDIR)/goalkeeper.h
	if [ -f include/goalkeeper.hpp ]; then install -m 0644 include/goalkeeper.hpp $(DESTDIR)$(INCLUDEDIR)/goalkeeper.hpp; fi
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    goalkeeper.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/goalkeeper.pc

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libgoalkeeper.so $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(MAJOR) \
	      $(DESTDIR)$(LIBDIR)/libgoalkeeper.so.$(VERSION) $(DESTDIR)$(INCLUDEDIR)/goalkeeper.h \
	      $(DESTDIR)$(INCLUDEDIR)/goalkeeper.hpp $(DESTDIR)$(PKGCONFIGDIR)/goalkeeper.pc

clean:
	$(CARGO) clean
