# sanvol — see README.md. Every target works on a fresh Debian 12 machine as
# root; the lab installs its own packages (qemu, debootstrap) when missing.

VERSION     := $(shell cat VERSION)
GO          ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN         := bin/sanvol
DESTDIR     ?= /

export CGO_ENABLED := 0
# Every go command builds with -trimpath, as make build (the RPM's binary)
# must: vet, staticcheck, the host tests, the RPM tests' make build and the
# lab's binaries then share one compile of the standard library and the
# modules. Mixed, a cold test command compiled everything twice (about 80 s
# of a core; docs/benchmarks.md, "The part before the lab").
export GOFLAGS := $(strip $(GOFLAGS) -trimpath)
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build install uninstall test unit conformance lab lab-extra lab-dom0 lab-pool lint demo bench fuzz lab-image clean rpm rpm-test

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/sanvol

# make install DESTDIR=<root>: the same as `sanvol install --root <root>`.
install: build
	./$(BIN) install --root $(DESTDIR)

uninstall: build
	./$(BIN) uninstall --root $(DESTDIR)

# The README's test command: lint; every host-side test (unit tests,
# conformance of the installed binary, the RPM's contents and scriptlets,
# the simulator); then the lab (real NVMe/TCP, iSCSI, multipath and LVM in
# a qemu guest).
# The lab's images (cached under /var/cache/sanvol-lab) are built in the
# background while lint and the host tests run: cold, they are minutes of
# mostly download and dpkg (the backports and dom0-tools images are
# derived from the bookworm one; the latter also compiles XCP-ng's lvm2,
# multipath-tools and open-iscsi), which overlap the tests' CPU. The lab
# waits for them: guests booted beside the dom0 tools' compile starved it
# (docs/benchmarks.md, "The whole pool set on one pair"). Lint and the host
# tests run at nice 10, so the images, the lab's critical path, take the
# cores first and the Go side the rest: cold, the dom0-tools image ended
# about 100 s after the Go side with one core idle (docs/benchmarks.md,
# "The part before the lab").
test:
	@(tests/lab/run.sh image && { tests/lab/run.sh image --kernel backports & b=$$!; \
		tests/lab/run.sh image --dom0 xcpng8; d=$$?; wait $$b && [ $$d = 0 ]; }) >lab-images.log 2>&1 & pid=$$!; \
	nice -n 10 $(MAKE) lint unit; rc=$$?; \
	wait $$pid || { echo "lab images failed:"; tail -30 lab-images.log; exit 1; }; \
	[ $$rc = 0 ] && $(MAKE) lab

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags lab ./...
	$(GO) run $(STATICCHECK) -tags lab ./...

unit:
	$(GO) test -count=1 ./...

conformance:
	$(GO) test -count=1 ./tests/conformance/

# Every scenario on Debian 12's 6.1 kernel, in eight guests side by side:
# - two guests with Debian's tools share most scenarios;
# - the dom0-tools guest (XCP-ng 8.x dom0's lvm2 2.02.180, multipath-tools
#   and open-iscsi built from ../shared/dom0-tools, issue 16) runs the
#   scenarios most sensitive to LVM and the iSCSI ones an 8.x host can
#   run (it has no NVMe/TCP), instead of a Debian guest running them;
# - two pool pairs (two guests each, issue 15) run issue 15's pool list:
#   the first the demo's two pool scenarios (TestPoolNVMe, TestPoolISCSI),
#   the master change, the member's reboot and the floating portal on a
#   dummy interface (LAB_POOL_1); the second the 100 interleaved
#   operations, the member's path loss, the master change with a write in
#   flight (which counts the LVM processes per call first) and the iSCSI
#   floating portal (LAB_POOL_2);
# - beside them the NVMe DH-HMAC-CHAP scenarios on bookworm-backports'
#   6.12 kernel (the XCP-ng 9 stand-in).
# On two cores the sum of the guests' CPU, not the number of guests, sets
# the wall time (docs/benchmarks.md, "The lab's time"): every guest but
# the pool masters and the 6.12 auth guest has one vCPU there, which does
# the same work for about 0.8 of the host CPU ("One vCPU per guest beside
# others"). Cold, the test command took 1553-1604 s with both pairs once the
# part before the lab had stopped compiling everything twice and idling
# a core (docs/benchmarks.md, "Both pool pairs in make lab"). Issue 17's
# pool scenarios and the extra ones run in make lab-pool and make
# lab-extra.
# TestDMSnapshotPrimitives drives the kernel steps that TestSnapshotLive
# and TestSnapshotLiveISCSI drive through the engine.
# --timeout 1500 leaves a loaded machine room without changing an
# unloaded run's time.
LAB_DOM0_TESTS = TestEngineLifecycle|TestEngineNonMaster|TestEngineCrashVolumeSteps|TestISCSILifecycle|TestSnapshotLiveISCSI|TestISCSIFailover|TestISCSIGrow|TestISCSISMNextDoor|TestISCSICHAP|TestISCSIWriteStall|TestISCSIAttachTwoPortals|TestISCSIProbe|TestISCSIWrongIQN
LAB_POOL_1 = TestPoolNVMe|TestPoolISCSI|TestPoolMasterChange|TestPoolMemberReboot|TestPoolFloatingPortalNVMe
LAB_POOL_2 = TestPoolInterleaved|TestPoolMemberPathLoss|TestPoolMasterChangeInFlight|TestPoolFloatingPortalISCSI
LAB_EXTRA_TESTS = TestDMSnapshotPrimitives|TestSnapshotXOBackup|TestCloneLive|TestCloneLiveISCSI|TestSnapshotKillEveryStep
lab:
	tests/lab/run.sh test --shards 2 --timeout 1500 --skip '^($(LAB_EXTRA_TESTS)|$(LAB_DOM0_TESTS))$$' \
		--also 'bookworm+xcpng8:^($(LAB_DOM0_TESTS))$$' --also 'backports:^TestNVMeAuth' \
		--with-pool '^($(LAB_POOL_1))$$' --with-pool '^($(LAB_POOL_2))$$'

# What make lab leaves out, for a machine with more cores or more time: the
# dom0-tools guest's whole set, the pool lab and the extra scenarios, one
# after another.
lab-extra: lab-dom0 lab-pool
	tests/lab/run.sh test -run '^($(LAB_EXTRA_TESTS))$$'

# The dom0-tools guest alone, with the zeroing comparison as well
# (docs/benchmarks.md).
lab-dom0:
	tests/lab/run.sh test --dom0 xcpng8 -run '^($(LAB_DOM0_TESTS)|TestBlockdevZeroOut)$$'

# The pool lab (issue 15): two guests on a private qemu socket link, the
# master serving the targets on its own addresses and a member driven
# through its agent; every TestPool scenario, one after another.
lab-pool:
	tests/lab/run.sh test --pool -run '^TestPool'

# The main job: boot the pool lab (two hosts) and run the pool's story on
# both SR types (TestPoolNVMe, TestPoolISCSI): a shared SR plugged on both
# hosts, metadata written by the master only, a portal cut under a VM
# writing on the member, the VM moved and live-migrated to the master,
# narrated in chapters as the xe commands an admin would type.
demo:
	tests/lab/run.sh demo


lab-image:
	tests/lab/run.sh image

bench:
	$(GO) test -run '^$$' -bench . -benchtime=200x ./tests/conformance/

# Every fuzz target of the module, FUZZTIME each, one after another: go test
# -fuzz runs a single target per invocation, so the targets are found by name
# and a new one is covered without editing this file.
FUZZTIME ?= 10m
fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
	  for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
	    echo "== $$t ($$(dirname $$f))"; \
	    $(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -parallel 1 ./$$(dirname $$f)/; \
	  done; \
	done

clean:
	rm -rf bin

# make rpm: bin/sanvol-<version>-<release>.x86_64.rpm for XCP-ng dom0, from
# the static binary, with rpmbuild (Debian 12: apt-get install rpm; no root,
# no network) and packaging/sanvol.spec, which says what goes in and why.
# Nothing is compiled for packaging. rpmbuild works in a throwaway _topdir
# under bin/; RPM_OUT is where the package goes.
RPM_RELEASE ?= 1
RPM_OUT     ?= bin

rpm: build
	@mkdir -p $(RPM_OUT) && top=$$(mktemp -d $(CURDIR)/bin/rpmbuild.XXXXXX) && \
	rpmbuild -bb --quiet \
		--define "_topdir $$top" --define "_tmppath $$top/tmp" \
		--define "_rpmdir $(abspath $(RPM_OUT))" \
		--define "_rpmfilename %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
		--define "sanvol_version $(VERSION)" --define "sanvol_release $(RPM_RELEASE)" \
		--define "sanvol_src $(CURDIR)" \
		packaging/sanvol.spec; rc=$$?; rm -rf "$$top"; exit $$rc
	@echo $(abspath $(RPM_OUT))/sanvol-$(VERSION)-$(RPM_RELEASE).x86_64.rpm

# The package's contents, static binary and scriptlets (install, refused
# removal while an SR is plugged, upgrade, erase) in a throwaway rpm root.
# Needs rpm (rpmbuild), rpm2cpio and cpio (apt-get install rpm rpm2cpio cpio)
# and root.
rpm-test:
	$(GO) test -count=1 ./tests/packaging/
