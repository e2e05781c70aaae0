package schema

// Request argument structs, one per method. Field names are the wire names;
// the plugin's decoder checks presence and type before filling them, so
// these carry plain values.

// DbgArgs is the argument set of methods that take only dbg.
type DbgArgs struct {
	Dbg string `json:"dbg"`
}

// SRProbeArgs are SR.probe's arguments.
type SRProbeArgs struct {
	Dbg           string            `json:"dbg"`
	Configuration map[string]string `json:"configuration"`
}

// SRCreateArgs are SR.create's arguments.
type SRCreateArgs struct {
	Dbg           string            `json:"dbg"`
	UUID          string            `json:"uuid"`
	Configuration map[string]string `json:"configuration"`
	Name          string            `json:"name"`
	Description   string            `json:"description"`
}

// SRAttachArgs are SR.attach's arguments.
type SRAttachArgs struct {
	Dbg           string            `json:"dbg"`
	Configuration map[string]string `json:"configuration"`
}

// SRArgs is the argument set of SR methods that take dbg and sr.
type SRArgs struct {
	Dbg string `json:"dbg"`
	SR  string `json:"sr"`
}

// SRSetNameArgs are SR.set_name's arguments.
type SRSetNameArgs struct {
	Dbg     string `json:"dbg"`
	SR      string `json:"sr"`
	NewName string `json:"new_name"`
}

// SRSetDescriptionArgs are SR.set_description's arguments.
type SRSetDescriptionArgs struct {
	Dbg            string `json:"dbg"`
	SR             string `json:"sr"`
	NewDescription string `json:"new_description"`
}

// VolumeCreateArgs are Volume.create's arguments.
type VolumeCreateArgs struct {
	Dbg         string `json:"dbg"`
	SR          string `json:"sr"`
	Name        string `json:"name"`
	Description string `json:"description"`
	Size        int64  `json:"size"`
	Sharable    bool   `json:"sharable"`
}

// VolumeArgs is the argument set of Volume methods that take sr and key.
type VolumeArgs struct {
	Dbg string `json:"dbg"`
	SR  string `json:"sr"`
	Key string `json:"key"`
}

// VolumeResizeArgs are Volume.resize's arguments.
type VolumeResizeArgs struct {
	Dbg     string `json:"dbg"`
	SR      string `json:"sr"`
	Key     string `json:"key"`
	NewSize int64  `json:"new_size"`
}

// VolumeSetArgs are Volume.set's arguments.
type VolumeSetArgs struct {
	Dbg string `json:"dbg"`
	SR  string `json:"sr"`
	Key string `json:"key"`
	K   string `json:"k"`
	V   string `json:"v"`
}

// VolumeUnsetArgs are Volume.unset's arguments.
type VolumeUnsetArgs struct {
	Dbg string `json:"dbg"`
	SR  string `json:"sr"`
	Key string `json:"key"`
	K   string `json:"k"`
}

// VolumeSetNameArgs are Volume.set_name's arguments.
type VolumeSetNameArgs struct {
	Dbg     string `json:"dbg"`
	SR      string `json:"sr"`
	Key     string `json:"key"`
	NewName string `json:"new_name"`
}

// VolumeSetDescriptionArgs are Volume.set_description's arguments.
type VolumeSetDescriptionArgs struct {
	Dbg            string `json:"dbg"`
	SR             string `json:"sr"`
	Key            string `json:"key"`
	NewDescription string `json:"new_description"`
}

// DatapathOpenArgs are Datapath.open's arguments.
type DatapathOpenArgs struct {
	Dbg        string `json:"dbg"`
	URI        string `json:"uri"`
	Persistent bool   `json:"persistent"`
}

// DatapathArgs is the argument set of Datapath methods with uri and domain.
type DatapathArgs struct {
	Dbg    string `json:"dbg"`
	URI    string `json:"uri"`
	Domain string `json:"domain"`
}

// DatapathCloseArgs are Datapath.close's arguments.
type DatapathCloseArgs struct {
	Dbg string `json:"dbg"`
	URI string `json:"uri"`
}
