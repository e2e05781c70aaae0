package host

import "strings"

// InventoryPath is xapi's host inventory. Its INSTALLATION_UUID is this
// host's uuid in XenAPI (xen-api ocaml/xapi/helpers.ml get_localhost
// looks the host record up by it; sm's util.get_this_host reads it too).
const InventoryPath = "/etc/xensource-inventory"

// ReadInventory parses the inventory's KEY='value' lines; a host without
// one (not XCP-ng) gets an empty map.
func ReadInventory(root Root) map[string]string {
	out := map[string]string{}
	b, err := root.ReadFile(InventoryPath)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, val, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		out[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(val), `'"`)
	}
	return out
}
