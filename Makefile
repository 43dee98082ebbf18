# Keel build. Sources are picked up by wildcard: a new runtime/keel_*.c or
# bindings/*.c is built without touching this file.
PREFIX ?= /usr/local
BUILD  ?= build
CC     ?= cc
PKGS    = luajit libuv hiredis
OPT    ?= -O2
SAN    ?=
CFLAGS_BASE = -std=c11 -Wall -Wextra -Werror $(OPT) -g -fPIC -D_GNU_SOURCE \
              -Iruntime -Ibindings -Ibindings/include $(SAN)
PKG_CFLAGS  = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS    = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# keel.store calls libsqlite3 through ffi.C only: --no-as-needed keeps its
# DT_NEEDED entry although no object references it.
LIBS        = $(PKG_LIBS) -Wl,--no-as-needed -lsqlite3 -Wl,--as-needed -lm -lpthread -ldl

RUNTIME_SRC  = $(wildcard runtime/*.c)
BINDINGS_SRC = $(filter-out bindings/keel_cli.c,$(wildcard bindings/*.c))
LIB_OBJ      = $(patsubst %.c,$(BUILD)/obj/%.o,$(RUNTIME_SRC) $(BINDINGS_SRC))
CLI_OBJ      = $(BUILD)/obj/bindings/keel_cli.o
HEADERS      = $(wildcard runtime/*.h bindings/*.h bindings/include/*.h)

DEPS_PKGS = build-essential pkg-config luajit2 libluajit2-5.1-dev libuv1-dev libhiredis-dev \
            libsqlite3-dev lua-busted lua-check redis-server lua-cjson
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps run test asan lint bench install clean examples FORCE

all: $(BUILD)/keel $(BUILD)/libkeel.a $(BUILD)/libkeel.so $(BUILD)/embed-host

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(PKG_CFLAGS) -c $< -o $@

$(BUILD)/libkeel.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libkeel.so: $(LIB_OBJ)
	$(CC) -shared $(SAN) -o $@ $^ $(LIBS)

# -rdynamic exports the runtime's symbols so the LuaJIT FFI (ffi.C) finds them;
# objects are linked directly so no primitive is dropped as "unused".
$(BUILD)/keel: $(CLI_OBJ) $(LIB_OBJ)
	$(CC) $(SAN) -rdynamic -o $@ $^ $(LIBS)

$(BUILD)/embed-host: examples/embed/host.c $(LIB_OBJ) $(HEADERS)
	$(CC) $(CFLAGS_BASE) $(PKG_CFLAGS) -rdynamic -o $@ examples/embed/host.c $(LIB_OBJ) $(LIBS)

# Installs only what is missing, so a second run does nothing.
deps:
	@missing=""; for p in $(DEPS_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "deps: all present"; fi

# The marker holds the package list it was made for: after a pull that
# changes DEPS_PKGS, the next build installs what is new.
.deps-ok: FORCE
	@echo '$(DEPS_PKGS)' | cmp -s - $@ || { $(MAKE) --no-print-directory deps && echo '$(DEPS_PKGS)' > $@; }

run: .deps-ok all
	$(BUILD)/keel examples/pipeline.lua

# A hung spec must fail the run, not stall CI: the whole suite takes well
# under a minute.
SUITE_TIMEOUT = timeout --kill-after=30 1200

test: .deps-ok all
	$(SUITE_TIMEOUT) $(BUILD)/keel spec/run.lua

asan: .deps-ok
	$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  KEEL_BIN=build-asan/keel $(SUITE_TIMEOUT) build-asan/keel spec/run.lua

lint: .deps-ok
	luacheck --quiet lua spec bench examples bindings/lua
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --inline-suppr \
	  -Iruntime -Ibindings -Ibindings/include runtime bindings examples/embed

bench: .deps-ok all $(BUILD)/store-baseline
	$(BUILD)/keel bench/run.lua

# The plain-C SQLite loop bench/store.lua compares group commit against.
$(BUILD)/store-baseline: bench/store_baseline.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_BASE) -o $@ $< -lsqlite3

# pkg-config files for hosts (README "Embedding"): keel.pc links libkeel.so,
# keel-static.pc the archive, whole (the FFI looks up symbols that no C code
# references, so the linker would drop them) and with the executable's
# symbols exported. Written at install time, for the prefix installed to.
PC_LIBS_PRIVATE = $(LIBS)
PC_HEAD = 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' \
          'luaroot=$${prefix}/share/keel' '' 'Version: 0.1.0' 'Cflags: -I$${includedir}'

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(PREFIX)/share/keel/lua
	install -m 755 $(BUILD)/keel $(DESTDIR)$(PREFIX)/bin/keel
	install -m 644 $(BUILD)/libkeel.a $(BUILD)/libkeel.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 bindings/include/keel.h $(DESTDIR)$(PREFIX)/include/keel.h
	cp -R lua/keel bindings/lua/keel $(DESTDIR)$(PREFIX)/share/keel/lua/
	printf '%s\n' $(PC_HEAD) 'Name: keel' 'Description: Keel runtime, embedding API (keel.h), shared library' \
	  'Libs: -L$${libdir} -Wl,-rpath,$${libdir} -lkeel -Wl,--export-dynamic' \
	  'Libs.private: $(PC_LIBS_PRIVATE)' > $(DESTDIR)$(PREFIX)/lib/pkgconfig/keel.pc
	printf '%s\n' $(PC_HEAD) 'Name: keel-static' 'Description: Keel runtime, embedding API (keel.h), static archive' \
	  'Libs: -Wl,--export-dynamic -Wl,--whole-archive $${libdir}/libkeel.a -Wl,--no-whole-archive' \
	  'Libs.private: $(PC_LIBS_PRIVATE)' > $(DESTDIR)$(PREFIX)/lib/pkgconfig/keel-static.pc

clean:
	rm -rf build build-asan .deps-ok
