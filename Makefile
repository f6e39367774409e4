# sockflow: `make run` starts the monitor, `make test` runs every test.
#
# Both install what a fresh Debian machine lacks (apt), build the BPF object with
# CO-RE (no dependency on this machine's kernel beyond BTF at run time), generate
# the skeleton that embeds it, then build the Swift package.

.DELETE_ON_ERROR:
.PHONY: all deps bpf swift release run test unit integration clean help bench bench-deps bench-consumer bench-profile

ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null)
BPF_CLANG ?= clang
BPFTOOL ?= bpftool
SWIFT ?= swift
# Release binaries link the Swift runtime and Foundation (which Yams needs)
# statically: sockflow runs on servers without a Swift toolchain, and the
# agent's resident memory drops by about 6 MB of shared-library pages.
RELEASE_BUILD = $(SWIFT) build -c release --static-swift-stdlib
OUT := build
SKEL := Sources/CSockFlowSkel/include/sockflow.skel.h
ABI := Sources/CSockFlowABI/include/sockflow_abi.h
BPF_CFLAGS := -target bpf -D__TARGET_ARCH_$(ARCH) -g -O2 -Wall -Werror \
	-ISources/CSockFlowABI/include $(if $(MULTIARCH),-I/usr/include/$(MULTIARCH))
RUN_ARGS ?=
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

all: release

help:
	@echo "make run     build and start 'sockflow monitor' (root)"
	@echo "make test    build and run every test (integration tests need root)"
	@echo "make release build .build/release/sockflow"
	@echo "make bench   the storm alone vs with sockflow and its peers, side by side (root)"
	@echo "make bench-profile  where the storm's kernel time goes with sockflow, by category (root)"

# Packages a fresh Debian 12 lacks. clang: any clang that targets BPF will do
# (the Swift toolchain's does); Debian's is installed only when none does.
APT_PACKAGES := libbpf-dev libelf-dev zlib1g-dev pkg-config bpftool iproute2 curl jq python3 gcc libc6-dev
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if ! $(BPF_CLANG) -print-targets 2>/dev/null | grep -qw bpf; then missing="$$missing clang"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# the tests validate records against docs/record.schema.json with python's jsonschema:
	@# Debian's package for Debian's python3, pip for any other python3 on the PATH
	@python3 -c 'import jsonschema' 2>/dev/null || \
		{ [ "$$(command -v python3)" = /usr/bin/python3 ] && \
		  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-jsonschema >/dev/null; } || \
		python3 -m pip install -q jsonschema

$(OUT)/sockflow.bpf.o: bpf/sockflow.bpf.c bpf/vmlinux_min.h $(ABI) | deps
	@mkdir -p $(OUT)
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $(OUT)/sockflow.tmp.bpf.o
	$(BPFTOOL) gen object $@ $(OUT)/sockflow.tmp.bpf.o
	@rm -f $(OUT)/sockflow.tmp.bpf.o

# The skeleton embeds the object. Touching the umbrella header makes clang's
# module cache notice a regenerated skeleton.
$(SKEL): $(OUT)/sockflow.bpf.o
	$(BPFTOOL) gen skeleton $< name sockflow_bpf > $@.tmp 2>/dev/null
	mv $@.tmp $@
	touch Sources/CSockFlowSkel/include/CSockFlowSkel.h

bpf: $(SKEL)

$(OUT)/sfhelper: Tests/Helpers/sfhelper.c | deps
	@mkdir -p $(OUT)
	cc -O2 -Wall -Werror -o $@ $<

release: bpf
	$(RELEASE_BUILD) --product sockflow

run: release
	./.build/release/sockflow monitor $(RUN_ARGS)

# Integration tests drive the release binary, so the optimized build's object
# lifetimes are what gets tested.
test: release $(OUT)/sfhelper
	SOCKFLOW_BIN=$(CURDIR)/.build/release/sockflow SOCKFLOW_HELPER=$(CURDIR)/$(OUT)/sfhelper \
		$(SWIFT) test

unit: bpf
	$(SWIFT) test --filter SockFlowTests

$(OUT)/storm: bench/storm.c | deps
	@mkdir -p $(OUT)
	cc -O2 -Wall -Werror -pthread -o $@ $<

# The floor under sockflow's kernel cost: its hooks with empty programs.
$(OUT)/hooks_floor.bpf.o: bench/hooks_floor.bpf.c | deps
	@mkdir -p $(OUT)
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@

# The floor's what-if variants (bench/profile.py --what-if).
$(OUT)/hooks_floor_state_cb.bpf.o: bench/hooks_floor.bpf.c | deps
	@mkdir -p $(OUT)
	$(BPF_CLANG) $(BPF_CFLAGS) -DFLOOR_STATE_CB -c $< -o $@

$(OUT)/hooks_floor_destroy_tp.bpf.o: bench/hooks_floor.bpf.c | deps
	@mkdir -p $(OUT)
	$(BPF_CLANG) $(BPF_CFLAGS) -DFLOOR_DESTROY_TP -c $< -o $@

$(OUT)/hooks_floor: bench/hooks_floor.c | deps
	@mkdir -p $(OUT)
	cc -O2 -Wall -Werror -o $@ $< -lbpf

# The peers the benchmark compares with: Debian's libbpf-tools and auditd.
bench-deps: deps
	@missing=""; for p in libbpf-tools auditd linux-perf; do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; fi

# Interleaved rounds: the storm alone and with each monitor; memory; the consumer
# alone. Under 10 minutes. BENCH_ARGS="--rounds 7 --no-auditd" etc.
BENCH_ARGS ?=
bench: release bench-deps $(OUT)/storm $(OUT)/hooks_floor $(OUT)/hooks_floor.bpf.o
	$(RELEASE_BUILD) --product sockflow-bench
	python3 bench/run.py $(BENCH_ARGS)

# Where the storm's kernel time goes with sockflow, by category, from perf profiles
# of the storm alone, with the empty hooks and with sockflow. About 2 minutes.
bench-profile: release bench-deps $(OUT)/storm $(OUT)/hooks_floor $(OUT)/hooks_floor.bpf.o \
		$(OUT)/hooks_floor_state_cb.bpf.o $(OUT)/hooks_floor_destroy_tp.bpf.o
	python3 bench/profile.py $(PROFILE_ARGS)

# The consumer alone (no kernel): decode + flow table + owner + JSON + write(2).
bench-consumer: bpf
	$(RELEASE_BUILD) --product sockflow-bench
	./.build/release/sockflow-bench consumer 500000 7

clean:
	rm -rf $(OUT) $(SKEL) .build
