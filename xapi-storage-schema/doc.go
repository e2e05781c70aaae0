// Package schema holds the wire types of the xapi-storage v5 contract that
// sanvol's volume and datapath plugins speak, and an embedded JSON schema
// of every method's request, result and error document.
//
// Encoding rules (spec §4): optional fields are omitted, never null; maps
// and lists are {} and [], never null; variants are ["Name", arg]; sizes
// are int64 integer literals.
//
// The directory is named after xapi-project's xapi-storage repository,
// whose IDL defines the contract, and keeps that name because the
// project's layout (docs/design.md) fixes it. A Go package name cannot
// hold a hyphen, so the package is schema: import it as
//
//	schema "github.com/sanvol/sanvol/xapi-storage-schema"
package schema
