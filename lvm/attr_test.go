package lvm

import "testing"

func TestLVActiveStates(t *testing.T) {
	cases := map[string]bool{
		"-wi-a-----": true,  // active, table matches the metadata
		"-wi-XX--Xk": true,  // active, resized on another host (captured in the lab, lvm2 2.03.16)
		"-wi-s-----": true,  // suspended
		"-wi-d-----": true,  // mapped device present without tables
		"-wi-ao----": true,  // active and open
		"-wi-------": false, // inactive
		"-wi-h-----": false, // history of a removed LV
		"":           false,
	}
	for attr, want := range cases {
		t.Run(attr, func(t *testing.T) {
			if got := (LV{Attr: attr}).Active(); got != want {
				t.Errorf("%q: Active() = %v, want %v", attr, got, want)
			}
		})
	}
}
