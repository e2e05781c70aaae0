package doctor

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/sanvol/sanvol/host"
	"github.com/sanvol/sanvol/nvme"
)

const (
	hostNQNFile       = nvme.HostNQNFile
	sysMultipathParam = nvme.MultipathParam
	scopeNVMeHost     = "this host (nvmetcp)"
	// genNQN makes a random host NQN and its paired host ID, as sanvol
	// does at the first attach. nvme gen-hostnqn is not used: nvme-cli
	// 2.x derives it from the DMI product UUID, which cloned or
	// badly flashed machines share.
	genNQN = `u=$(cat /proc/sys/kernel/random/uuid); echo "nqn.2014-08.org.nvmexpress:uuid:$u" > /etc/nvme/hostnqn; echo "$u" > /etc/nvme/hostid`
)

func (r *run) checkNVMeHost(ctx context.Context, subjects []*subject) {
	r.checkNVMeCLI(ctx)
	r.checkNVMeTCP()
	r.checkNVMeMultipath()
	local := r.checkHostNQN(subjects)
	r.checkPoolHostNQN(ctx, local)
}

func (r *run) checkNVMeCLI(ctx context.Context) {
	v, err := r.tr.nvme.CLIVersion(ctx)
	switch {
	case err == nil:
		r.add(result(chkNVMeCLI, scopeNVMeHost, Pass, "nvme-cli "+v, nil, ""))
	case errors.Is(err, host.ErrNotInstalled):
		r.add(result(chkNVMeCLI, scopeNVMeHost, Fail, "nvme-cli is not installed", []string{err.Error()}, "yum install -y nvme-cli"))
	default:
		r.add(result(chkNVMeCLI, scopeNVMeHost, Warn, "nvme-cli does not run", []string{err.Error()}, "yum reinstall -y nvme-cli"))
	}
}

// kernelHas reports whether the running kernel has a module, loaded,
// built in or installed; known is false when nothing could be read.
func (r *run) kernelHas(module, config string) (has, known bool, evidence []string) {
	rel := kernelRelease(r.d.Root)
	sysName := strings.ReplaceAll(module, "-", "_")
	if r.d.Root.Exists("/sys/module/" + sysName) {
		return true, true, []string{"/sys/module/" + sysName + " exists: loaded"}
	}
	for _, f := range []string{"modules.builtin", "modules.dep"} {
		p := "/lib/modules/" + rel + "/" + f
		b, err := r.d.Root.ReadFile(p)
		if err != nil {
			continue
		}
		known = true
		if regexp.MustCompile(`(?m)/` + regexp.QuoteMeta(module) + `\.ko(\.[a-z]+)?:?`).Match(b) {
			return true, true, []string{p + " lists " + module + ".ko"}
		}
		evidence = append(evidence, p+" has no "+module+".ko")
	}
	p := "/boot/config-" + rel
	if b, err := r.d.Root.ReadFile(p); err == nil {
		known = true
		m := regexp.MustCompile(`(?m)^` + config + `=([ym])$`).FindSubmatch(b)
		if m != nil {
			return true, true, append(evidence, fmt.Sprintf("%s has %s=%s", p, config, m[1]))
		}
		evidence = append(evidence, p+" has no "+config)
	}
	return false, known, evidence
}

func (r *run) checkNVMeTCP() {
	rel := kernelRelease(r.d.Root)
	has, known, ev := r.kernelHas("nvme-tcp", "CONFIG_NVME_TCP")
	switch {
	case has:
		r.add(result(chkNVMeTCP, scopeNVMeHost, Pass, "kernel "+rel+" has nvme-tcp", ev, ""))
	case !known:
		r.add(result(chkNVMeTCP, scopeNVMeHost, Warn, "cannot tell whether kernel "+rel+" has nvme-tcp", ev, "modprobe nvme-tcp && echo available"))
	default:
		summary := "kernel " + rel + " has no nvme-tcp module"
		if strings.HasPrefix(rel, "4.") {
			summary += ": NVMe/TCP entered Linux 5.0, and XCP-ng 8.2 and 8.3 ship a 4.19 dom0 kernel built without it (CONFIG_NVME_TCP)"
		}
		r.add(result(chkNVMeTCP, scopeNVMeHost, Fail, summary, ev,
			"use an iscsi-ng SR on this host (works on XCP-ng 8.2 and 8.3), or boot a dom0 kernel with nvme-tcp (Linux 5.0 or later with CONFIG_NVME_TCP=m); see docs/install.md"))
	}
}

func (r *run) checkNVMeMultipath() {
	v, err := r.d.Root.ReadString(sysMultipathParam)
	fix := "echo 'options nvme_core multipath=Y' > /etc/modprobe.d/sanvol-nvme.conf\n" +
		"dracut -f   # nvme_core may load from the initrd\n" +
		"reboot      # or, with no NVMe device in use: modprobe -r nvme_tcp nvme_fabrics nvme_core && modprobe nvme_tcp"
	if err == nil {
		if nvme.MultipathOn(v) {
			r.add(result(chkNVMeMP, scopeNVMeHost, Pass, "native NVMe multipath is on", []string{sysMultipathParam + " = " + v}, ""))
			return
		}
		ev := []string{sysMultipathParam + " = " + v}
		ev = append(ev, r.modprobeOverrides()...)
		r.add(result(chkNVMeMP, scopeNVMeHost, Fail, "native NVMe multipath is off: every path would be a separate disk", ev, fix))
		return
	}
	if r.d.Root.Exists("/sys/module/nvme_core") {
		r.add(result(chkNVMeMP, scopeNVMeHost, Fail, "nvme_core has no multipath parameter: the kernel is built without CONFIG_NVME_MULTIPATH",
			[]string{sysMultipathParam + " is missing"}, "boot a kernel built with CONFIG_NVME_MULTIPATH=y"))
		return
	}
	if over := r.modprobeOverrides(); len(over) > 0 {
		r.add(result(chkNVMeMP, scopeNVMeHost, Fail, "nvme_core is not loaded, and modprobe.d turns native multipath off", over,
			"remove multipath=N from the file(s) above, then:\n"+fix))
		return
	}
	if has, _, ev := r.kernelHas("nvme-core", "CONFIG_NVME_MULTIPATH"); has {
		r.add(result(chkNVMeMP, scopeNVMeHost, Pass, "nvme_core is not loaded yet; the kernel has native multipath, on by default", ev, ""))
		return
	}
	r.add(result(chkNVMeMP, scopeNVMeHost, Warn, "nvme_core is not loaded; cannot tell whether native multipath will be on",
		[]string{sysMultipathParam + " is missing"}, "modprobe nvme_core && cat "+sysMultipathParam))
}

var mpOffRE = regexp.MustCompile(`(?m)^\s*options\s+nvme[_-]core\s+.*\bmultipath=(N|n|0)\b.*$`)

// modprobeOverrides lists modprobe.d lines that turn native multipath off.
func (r *run) modprobeOverrides() []string {
	var out []string
	for _, dir := range []string{"/etc/modprobe.d", "/lib/modprobe.d", "/usr/lib/modprobe.d"} {
		files, _ := r.d.Root.Glob(dir + "/*.conf")
		for _, f := range files {
			b, err := r.d.Root.ReadFile(f)
			if err != nil {
				continue
			}
			for _, m := range mpOffRE.FindAll(b, -1) {
				out = append(out, f+": "+strings.TrimSpace(string(m)))
			}
		}
	}
	return out
}

func (r *run) checkIOPolicy(s *subject) {
	nqn, want := s.nvme.NQN, s.nvme.IOPolicy
	if nqn == "" {
		r.add(result(chkIOPolicy, s.scope(), Skip, "no subsystem NQN in the device-config yet", nil, ""))
		return
	}
	subs, err := r.tr.nvme.Subsystems()
	var ev []string
	if err != nil {
		ev = append(ev, err.Error())
	}
	worst, summary := Skip, "subsystem not connected on this host; sanvol sets iopolicy="+want+" when it attaches"
	var fix []string
	for _, sub := range subs {
		if sub.NQN != nqn {
			continue
		}
		pol := sub.IOPolicy
		if pol == "" {
			pol = "(unreadable)"
		}
		ev = append(ev, fmt.Sprintf("%s/iopolicy = %s", sub.Dir(), pol))
		if pol == want {
			if worst < Pass {
				worst, summary = Pass, "iopolicy="+want
			}
			continue
		}
		worst, summary = Fail, fmt.Sprintf("iopolicy is %s, the SR wants %s", pol, want)
		fix = append(fix, fmt.Sprintf("echo %s > %s/iopolicy", want, sub.Dir()))
	}
	if worst == Fail {
		fix = append(fix, "# sanvol sets it at every attach: if it changes back, look for a udev rule or tool that sets it: grep -rl iopolicy /etc/udev/rules.d /usr/lib/udev/rules.d")
	}
	r.add(result(chkIOPolicy, s.scope(), worst, summary, ev, strings.Join(fix, "\n")))
}

// checkHostNQN checks the host NQN this host presents and returns the
// one in /etc/nvme/hostnqn ("" when absent).
func (r *run) checkHostNQN(subjects []*subject) string {
	local, err := r.d.Root.ReadString(hostNQNFile)
	var ev []string
	worst, summary, fix := Pass, "", ""
	switch {
	case err != nil:
		worst, summary = Warn, "no "+hostNQNFile+" yet: sanvol generates it at the first attach, but the array's host ACL needs it before"
		fix = genNQN + "\n# then allow this NQN on the array"
		ev = append(ev, err.Error())
		local = ""
	case !nvme.ValidNQN(local):
		worst, summary = Fail, fmt.Sprintf("%s holds %q, which is not an NQN", hostNQNFile, local)
		fix = genNQN + "\n# then update the array's host ACL and re-plug the nvmetcp SRs on this host"
	default:
		summary = "host NQN " + local
		ev = append(ev, hostNQNFile+" = "+local)
	}
	for _, s := range subjects {
		if s.Type != TypeNVMeTCP {
			continue
		}
		if v := s.nvme.HostNQN; v != "" {
			ev = append(ev, fmt.Sprintf("%s sets device-config:hostnqn=%s", s.scope(), v))
			if worst < Warn {
				worst = Warn
				summary = "device-config:hostnqn is set, so every host of the pool presents the same host NQN and the array cannot tell them apart"
				fix = recreatePBD(s, "no hostnqn key (each host then uses its own "+hostNQNFile+")")
			}
		}
	}
	r.add(result(chkHostNQN, scopeNVMeHost, worst, summary, ev, fix))
	return local
}

func (r *run) checkPoolHostNQN(ctx context.Context, local string) {
	const scope = "pool"
	if local == "" {
		r.add(result(chkPoolHostNQN, scope, Warn, "cannot check pool-wide uniqueness: this host has no host NQN yet", nil, genNQN))
		return
	}
	hosts, self, ok := r.poolHosts(ctx, chkPoolHostNQN)
	if !ok {
		return
	}
	var ev []string
	if me := findHost(hosts, self); me != nil && me.HostNQN != local {
		switch {
		case !r.o.Record:
			ev = append(ev, fmt.Sprintf("this host's XenAPI record has other-config:%s=%q, not this host's NQN (run sanvol doctor --record to store it)", otherConfigHostNQN, me.HostNQN))
		default:
			if err := r.d.Pool.RecordHostNQN(ctx, self, local); err != nil {
				ev = append(ev, "could not record this host's NQN in XenAPI: "+err.Error())
			} else {
				ev = append(ev, fmt.Sprintf("recorded this host's NQN in XenAPI (host other-config:%s), where the other hosts' doctors compare it", otherConfigHostNQN))
			}
		}
	}
	r.uniqueInPool(chkPoolHostNQN, "host NQN", local, hosts, self, func(h PoolHost) string { return h.HostNQN }, ev,
		genNQN+"\n# on this host; then allow the new NQN on the array and re-plug the nvmetcp SRs here",
		"run sanvol doctor --record on each host listed, which records its NQN, then run it here again")
}
