# Vessel: `make run` runs the main job, `make test` runs the tests (each installs what it needs).
SWIFT        ?= swift
OUT          ?= out
STATIC_BUILD ?= .build-static
PROTOC_GEN   ?= .build/debug/protoc-gen-swift

# What building and testing needs on a fresh Debian 12 (Swift itself comes from /opt/swift).
APT_PACKAGES := busybox-static libseccomp-dev libmount-dev pkg-config protobuf-compiler runc crun util-linux \
                cpio zstd lz4 qemu-system-x86 gcc libc6-dev

# make install: host executables into $(PREFIX)/bin, guest files into $(PREFIX)/share/vessel, a
# default configuration into $(SYSCONFDIR)/vessel (never overwritten); DESTDIR stages it all.
PREFIX       ?= /usr/local
SYSCONFDIR   ?= /etc
DESTDIR      ?=
HOST_EXECUTABLES := vessel
# containerd finds its shim by name; it is the same binary (it picks the front door by argv[0]).
HOST_LINKS   := containerd-shim-vessel-v2
GUEST_FILES  := bzImage initrd.img initrd-debug.img

KERNEL ?= $(OUT)/bzImage
INITRD ?= $(OUT)/initrd.img
DEBUG_INITRD ?= $(OUT)/initrd-debug.img

.PHONY: all deps build agent agent-dynamic vessel kernel initrd boot proto test bench soak validate run demo clean \
        install install-files uninstall fuzz lint format

all: build

deps:
	@scripts/install-deps.sh $(APT_PACKAGES)

build: deps
	$(SWIFT) build

# swift-format (part of the Swift toolchain) with the project's .swift-format; generated protobuf
# files opt out in their header. `make format` rewrites, `make lint` (CI) only checks.
FORMATTED = Sources Tests Fuzz/Sources Package.swift Fuzz/Package.swift
format:
	$(SWIFT) format format --in-place --recursive --parallel $(FORMATTED)
lint:
	$(SWIFT) format lint --strict --recursive --parallel $(FORMATTED)

# The guest agent: fully static (glibc, Swift runtime, Foundation-free), stripped.
agent: deps
	$(SWIFT) build -c release --product vessel-agent -Xswiftc -static-executable --scratch-path $(STATIC_BUILD)
	@mkdir -p $(OUT)
	@strip -o $(OUT)/.vessel-agent.new $(STATIC_BUILD)/release/vessel-agent
	@# Replace only when it changed, so the initrd is rebuilt only when needed.
	@cmp -s $(OUT)/.vessel-agent.new $(OUT)/vessel-agent && rm $(OUT)/.vessel-agent.new || mv $(OUT)/.vessel-agent.new $(OUT)/vessel-agent
	@echo "$(OUT)/vessel-agent: $$(stat -c %s $(OUT)/vessel-agent) bytes (static, stripped; unstripped $$(stat -c %s $(STATIC_BUILD)/release/vessel-agent))"

# The host runtime CLI, Swift runtime linked in (docker and podman exec it with a bare environment).
# Its default configuration finds bzImage and initrd.img next to it in $(OUT).
vessel: deps
	$(SWIFT) build -c release --product vessel -Xswiftc -static-stdlib
	@mkdir -p $(OUT)
	@strip -o $(OUT)/.vessel.new .build/release/vessel && mv $(OUT)/.vessel.new $(OUT)/vessel
	@for link in $(HOST_LINKS); do ln -sf vessel $(OUT)/$$link; done
	@echo "$(OUT)/vessel: $$(stat -c %s $(OUT)/vessel) bytes (also as $(HOST_LINKS))"

# The guest kernel from Debian's linux-source-6.1 and kernel-config/, cached per fragment hash.
kernel: deps
	kernel-config/build-kernel.sh --out $(OUT)

# The initrd: rootfs/ plus the static agent as /init (reproducible); the debug one adds busybox.
initrd: agent
	@$(MAKE) --no-print-directory $(INITRD) $(DEBUG_INITRD)

$(INITRD): $(OUT)/vessel-agent $(shell find rootfs -type f)
	$(SWIFT) build --product vessel-image
	.build/debug/vessel-image --agent $(OUT)/vessel-agent --rootfs rootfs --output $@

$(DEBUG_INITRD): $(OUT)/vessel-agent $(shell find rootfs -type f)
	$(SWIFT) build --product vessel-image
	.build/debug/vessel-image --agent $(OUT)/vessel-agent --rootfs rootfs --output $@ --debug

# For the record in ARCHITECTURE.md: the agent linked against the system's shared libraries.
agent-dynamic: deps
	$(SWIFT) build -c release --product vessel-agent -Xswiftc -static-stdlib --scratch-path .build-dynamic
	@strip -o $(OUT)/vessel-agent-dynamic .build-dynamic/release/vessel-agent
	@echo "$(OUT)/vessel-agent-dynamic: $$(stat -c %s $(OUT)/vessel-agent-dynamic) bytes, plus:"
	@ldd $(OUT)/vessel-agent-dynamic | awk '/=>/ {print $$3}' | xargs -r readlink -f | xargs -r stat -L -c '  %n %s bytes'

# Regenerates Sources/VesselProtocol/Generated from proto/ (the output is committed).
proto: deps
	@scripts/install-deps.sh libprotobuf-dev
	@# A debug build of the generator: the same output, minutes sooner than a release build.
	$(SWIFT) build --product protoc-gen-swift
	protoc --plugin=protoc-gen-swift=$(PROTOC_GEN) --swift_out=Sources/VesselProtocol/Generated \
	  --swift_opt=Visibility=Public -I proto $$(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)

test: deps kernel initrd vessel
	$(SWIFT) build --build-tests
	@# Serially: the VM tests block while a TCG guest boots, and on 2 cores parallel suites would
	@# starve each other's timing-sensitive tests (ttrpc deadlines) of the cooperative thread pool.
	@# VESSEL_OUT: what `make install` installs (the install test stages it in a DESTDIR).
	VESSEL_KERNEL=$(abspath $(KERNEL)) VESSEL_INITRD=$(abspath $(INITRD)) VESSEL_DEBUG_INITRD=$(abspath $(DEBUG_INITRD)) \
	  VESSEL_OUT=$(abspath $(OUT)) $(SWIFT) test --skip-build --no-parallel

demo: build
	.build/debug/vessel-dev demo

# Boots the guest (QEMU, TCG unless KVM works here) until the agent is ready, then powers it off.
boot: kernel initrd
	qemu-system-x86_64 -accel tcg -machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=256M,share=on \
	  -m 256M -smp 1 -nographic -nodefaults -no-reboot -serial stdio -kernel $(KERNEL) -initrd $(INITRD) \
	  -append "console=ttyS0 panic=-1 quiet reboot=t agent.selftest=crash,poweroff"

# The main job: boot a VM with the built kernel and initrd and run a busybox container in it.
run: kernel initrd vessel
	$(SWIFT) build --product vessel-dev
	.build/debug/vessel-dev bundle $(OUT)/demo-bundle -- sh -c \
	  'echo "hello from a Vessel container: $$(hostname), kernel $$(uname -r), $$(grep -c ^processor /proc/cpuinfo) vCPU"'
	$(OUT)/vessel run --bundle $(OUT)/demo-bundle vessel-demo-$$$$

bench: agent vessel kernel initrd $(OUT)/poweroff-initrd.img
	$(SWIFT) build -c release --product vessel-dev
	.build/release/vessel-dev bench --agent $(OUT)/vessel-agent --count 50
	.build/release/vessel-dev boot-bench --kernel $(KERNEL) --initrd $(INITRD) --baseline-initrd $(OUT)/poweroff-initrd.img --count 5
	.build/release/vessel-dev run-bench --vessel $(OUT)/vessel --kernel $(KERNEL) --initrd $(INITRD) \
	  --baseline-initrd $(OUT)/poweroff-initrd.img --count 10
	@# Network: iperf3 both ways and ping RTT from a pod namespace, vessel vs runc.
	bench/network-bench.sh $(OUT)/vessel $(KERNEL) $(INITRD)
	@# containerd: ctr run vs runc, a CRI pod's start, a second container, teardown, PSS.
	bench/containerd-bench.sh $(OUT)/vessel $(KERNEL) $(INITRD) 5
	@# Hybrid vsock through a TCG guest next to a Unix socketpair (the ceiling), measured by the VM test's guest.
	@VESSEL_KERNEL=$(abspath $(KERNEL)) $(SWIFT) test --filter 'guestEndToEnd|socketpairNumbers' 2>&1 | grep VSOCK-BENCH

# Sandboxes that die badly (QEMU or the owner killed, delete --force during create, ctr kill),
# SOAK_CYCLES times each, counting what is left on the host after every cycle (goal: nothing).
SOAK_CYCLES ?= 100
soak: vessel kernel initrd
	$(SWIFT) build --product vessel-dev
	bench/soak.sh $(OUT)/vessel $(KERNEL) $(INITRD) $(SOAK_CYCLES)

# OCI runtime-tools validation (commit 260e151, the last Debian's Go 1.19 builds) for vessel next
# to crun, file by file; results in /tmp/vessel-runtime-tools/results.
validate: vessel kernel initrd
	@scripts/install-deps.sh crun >/dev/null
	scripts/runtime-tools.sh $(OUT)/vessel crun

# libFuzzer targets (Fuzz/, a package of its own) for the parsers of untrusted bytes: ttrpc, vhost-user,
# virtqueues, the vsock device, config.json, configuration.toml, rtnetlink. Built with ASan into
# .build-fuzz, each run FUZZ_SECONDS on a scratch copy of its seeds; fails on any crash, hang or leak
# (the input is kept in .build-fuzz/fuzz-artifacts/<target>/).
FUZZ_SECONDS ?= 30
fuzz:
	SWIFT=$(SWIFT) Fuzz/run.sh $(FUZZ_SECONDS)

# The boot benchmark's lower bound: the same kernel with an init that only powers off.
$(OUT)/poweroff-initrd.img: bench/poweroff-init.c
	@mkdir -p $(OUT)
	gcc -static -Os -o $(OUT)/poweroff-init bench/poweroff-init.c
	$(SWIFT) build --product vessel-image
	.build/debug/vessel-image --agent $(OUT)/poweroff-init --rootfs rootfs --output $@

install: vessel kernel initrd
	@$(MAKE) --no-print-directory install-files

# Copies what is built in $(OUT); the configuration only where there is none yet.
install-files:
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/vessel $(DESTDIR)$(SYSCONFDIR)/vessel
	install -m 755 $(addprefix $(OUT)/,$(HOST_EXECUTABLES)) $(DESTDIR)$(PREFIX)/bin/
	for link in $(HOST_LINKS); do ln -sf vessel $(DESTDIR)$(PREFIX)/bin/$$link; done
	install -m 644 $(addprefix $(OUT)/,$(GUEST_FILES)) $(DESTDIR)$(PREFIX)/share/vessel/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml ]; then \
	  echo "keeping $(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml"; \
	else \
	  sed 's|@PREFIX@|$(PREFIX)|g' packaging/configuration.toml > $(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml.new && \
	  chmod 644 $(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml.new && \
	  mv $(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml.new $(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml && \
	  echo "wrote $(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml"; \
	fi

# The configuration stays when it was edited (it is the administrator's).
uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,$(HOST_EXECUTABLES) $(HOST_LINKS)) $(addprefix $(DESTDIR)$(PREFIX)/share/vessel/,$(GUEST_FILES))
	-rmdir $(DESTDIR)$(PREFIX)/share/vessel 2>/dev/null
	@conf=$(DESTDIR)$(SYSCONFDIR)/vessel/configuration.toml; \
	if [ -e $$conf ] && sed 's|@PREFIX@|$(PREFIX)|g' packaging/configuration.toml | cmp -s - $$conf; then \
	  rm -f $$conf; rmdir $(DESTDIR)$(SYSCONFDIR)/vessel 2>/dev/null || true; \
	elif [ -e $$conf ]; then echo "keeping $$conf (edited)"; fi

clean:
	rm -rf .build $(STATIC_BUILD) .build-dynamic .build-fuzz $(OUT)
