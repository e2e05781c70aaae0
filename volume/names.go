package volume

// LVName is the LV that holds the volume with this key; the datapath
// plugin uses it to find the LV from a URI.
func LVName(key string) string { return lvName(key) }
