package doctor

import "strings"

// Source names the public document a check comes from, by title, and the
// section in it. A user running the doctor has only the public documents,
// so no Source names a file: docs/references.md lists them.
type Source struct {
	Doc     string
	Section string
}

func (s Source) String() string { return s.Doc + ", " + s.Section }

// The public guides the checks come from (docs/references.md, with what
// each one says that a check relies on).
const (
	seedISCSI   = "iSCSI on XCP-ng, Best Practices Guide"
	seedNVMe    = "NVMe-TCP on XCP-ng, Best Practices Guide"
	seedCitrix  = "Citrix XenServer Design: Configuring iSCSI Multipathing Support for XenServer"
	seedNexenta = "NexentaStor High-Availability iSCSI with Linux Clients"
	xcpngDocs   = "XCP-ng documentation (docs.xcp-ng.org)"
	xcpngKernel = "XCP-ng dom0 kernel configuration (xcp-ng-rpms/kernel, SOURCES/kernel-x86_64.config)"
	smCode      = "xcp-ng/sm (SMAPIv1 drivers, docs/iscsi-ng.md § SMAPIv1 next door)"
)

// CheckInfo describes one check for the documentation and the tests.
type CheckInfo struct {
	ID    string
	Title string
	// Types lists the SR types the check runs for; empty means all.
	Types   []string
	Sources []Source
}

func (c CheckInfo) source() string {
	s := make([]string, len(c.Sources))
	for i, src := range c.Sources {
		s[i] = src.String()
	}
	return strings.Join(s, "; ")
}

// Check IDs.
const (
	chkScope        = "doctor.scope"
	chkConfig       = "sr.config"
	chkPathCount    = "paths.count"
	chkPathLive     = "paths.live"
	chkRedundancy   = "paths.redundancy"
	chkManagement   = "paths.management"
	chkDefaultRoute = "paths.default-route"
	chkBond         = "paths.bond"
	chkARP          = "net.arp"
	chkRPFilter     = "net.rp-filter"
	chkMTU          = "net.mtu"
	chkNVMeCLI      = "nvme.cli"
	chkNVMeTCP      = "nvme.tcp"
	chkNVMeMP       = "nvme.multipath"
	chkIOPolicy     = "nvme.iopolicy"
	chkHostNQN      = "nvme.hostnqn"
	chkPoolHostNQN  = "pool.hostnqn"
	chkISCSId       = "iscsi.iscsid"
	chkMultipathd   = "iscsi.multipathd"
	chkNodeRecords  = "iscsi.node-timeouts"
	chkSMShared     = "iscsi.sm-shared-target"
	chkMap          = "iscsi.map"
	chkIQN          = "iscsi.initiator-iqn"
	chkPoolIQN      = "pool.iqn"
)

var nvmeOnly, iscsiOnly = []string{TypeNVMeTCP}, []string{TypeISCSI}

var checks = []CheckInfo{
	{chkScope, "what to check", nil, []Source{{"docs/doctor.md", "Usage"}}},
	{chkConfig, "device-config names the portals", nil, []Source{{seedISCSI, "High Availability & Redundancy › Creating iSCSI Storage Repository"}, {seedNVMe, "NVMe Multipath Configuration › Connecting to Storage"}}},
	{chkPathCount, "at least two paths", nil, []Source{
		{seedISCSI, "Architecture Overview › Reference Architecture (DM-Multipath: multiple redundant paths)"},
		{seedNVMe, "High Availability & Redundancy › Path Redundancy"},
		{seedNexenta, "introduction (\"we should always have two distinct paths\")"}}},
	{chkPathLive, "every configured path is live", nil, []Source{
		{seedISCSI, "High Availability & Redundancy › Path Redundancy (multipath -ll: every path active ready)"},
		{seedNVMe, "Monitoring & Maintenance › Health Check Script (controller state live)"}}},
	{chkRedundancy, "paths on at least two NICs", nil, []Source{
		{seedISCSI, "Network Design › Network Architecture Principles 2 (No Single Points of Failure)"},
		{seedCitrix, "Chapter 2 › Correct Physical and Subnet Configuration (each NIC on its own subnet)"},
		{seedNexenta, "assumptions (\"not using a single physical interface with multiple aliases\")"}}},
	{chkManagement, "no path through the management interface", nil, []Source{
		{seedCitrix, "Chapter 2 › Correct Physical and Subnet Configuration (\"Do not route iSCSI storage traffic through the XenServer host's management interface\")"},
		{seedISCSI, "Network Design › Network Architecture Principles 3 (Proper Segmentation)"}}},
	{chkDefaultRoute, "no path through the default route", nil, []Source{
		{seedISCSI, "Security Best Practices › Network Isolation (\"No default gateway: storage interfaces should not have default routes\")"},
		{seedNVMe, "Security Best Practices › Network Isolation"},
		{xcpngDocs, "Storage › Multipathing (no routes on iSCSI interfaces)"}}},
	{chkBond, "no NIC bond under a multipath path", nil, []Source{
		{seedCitrix, "Chapter 1 › Creating Redundancy for Storage Traffic (\"do not mix NIC bonding and iSCSI multipathing\")"},
		{xcpngDocs, "Storage › Multipathing (two NICs, two switches, no bonds)"}}},
	{chkARP, "ARP sysctls for storage NICs sharing a subnet", nil, []Source{
		{seedISCSI, "Network Design › ARP Configuration for Same-Subnet Multipath"},
		{seedNVMe, "Network Design › ARP Configuration for Same-Subnet Multipath"}}},
	{chkRPFilter, "reverse-path filter keeps replies on bound interfaces", nil, []Source{
		{seedNexenta, "Steps Client-Side 5 (rp_filter = 0 on the bound interfaces)"}}},
	{chkMTU, "MTU consistent end to end", nil, []Source{
		{seedISCSI, "Network Design › MTU Configuration (ping -M do -s 8972)"},
		{seedNVMe, "Network Design › MTU Configuration"}}},
	{chkNVMeCLI, "nvme-cli installed", nvmeOnly, []Source{{seedNVMe, "XCP-ng-Specific Considerations › Package Installation"}}},
	{chkNVMeTCP, "kernel has nvme-tcp", nvmeOnly, []Source{
		{seedNVMe, "XCP-ng-Specific Considerations › Package Installation (modprobe nvme-tcp)"},
		{xcpngKernel, "8.2 and 8.3 branches: Linux 4.19 without CONFIG_NVME_TCP"}}},
	{chkNVMeMP, "native NVMe multipath on", nvmeOnly, []Source{{seedNVMe, "NVMe Multipath Configuration › Native NVMe Multipath (nvme_core multipath=Y)"}}},
	{chkIOPolicy, "subsystem iopolicy as configured", nvmeOnly, []Source{{seedNVMe, "NVMe Multipath Configuration › Configure IO Policy (round-robin)"}}},
	{chkHostNQN, "host NQN present and this host's own", nvmeOnly, []Source{{seedNVMe, "NVMe Multipath Configuration › Connecting to Storage (nvme gen-hostnqn)"}}},
	{chkPoolHostNQN, "host NQN unique in the pool", nvmeOnly, []Source{
		{seedNVMe, "NVMe Multipath Configuration › Connecting to Storage"},
		{seedCitrix, "Chapter 2, step 2 (\"every iSCSI target and initiator have a unique IQN\"; the NVMe host NQN plays the same role)"}}},
	{chkISCSId, "iscsid running", iscsiOnly, []Source{{seedISCSI, "XCP-ng-Specific Considerations › Package Management (systemctl status iscsid)"}, {seedNexenta, "Steps Client-Side 1"}}},
	{chkMultipathd, "multipathd running", iscsiOnly, []Source{{seedISCSI, "XCP-ng-Specific Considerations › Package Management (systemctl status multipathd)"}, {seedNexenta, "Steps Client-Side 2"}}},
	{chkNodeRecords, "node records and sessions use the SR's timeouts", iscsiOnly, []Source{
		{seedNexenta, "Steps Client-Side 10 (node.session.timeo.replacement_timeout = 10)"}}},
	{chkSMShared, "no SMAPIv1 iSCSI SR on the same target IQN", iscsiOnly, []Source{
		{smCode, "drivers/BaseISCSI.py detach_and_delete (iscsilib.logout all=True: iscsiadm -m node -T <iqn> -u)"}}},
	{chkMap, "multipath map has the SR's settings", iscsiOnly, []Source{
		{seedISCSI, "Multipath Configuration › Custom Multipath Configuration (no_path_retry, custom.conf in conf.d)"},
		{seedNexenta, "Steps Client-Side 11 (features / no_path_retry)"}}},
	{chkIQN, "initiator IQN set and not a default", iscsiOnly, []Source{
		{seedCitrix, "Chapter 2, step 2 (unique IQN, else data corruption)"},
		{seedNexenta, "Steps Client-Side 3 (custom InitiatorName)"}}},
	{chkPoolIQN, "initiator IQN unique in the pool", iscsiOnly, []Source{{seedCitrix, "Chapter 2, step 2 (\"If a non-unique IQN identifier is used, data corruption can occur\")"}}},
}

// Checks lists every check with its sources, in report order.
func Checks() []CheckInfo { return append([]CheckInfo(nil), checks...) }

func checkByID(id string) (CheckInfo, bool) {
	for _, c := range checks {
		if c.ID == id {
			return c, true
		}
	}
	return CheckInfo{}, false
}
