package kvm

import "fmt"

// routeTypeMSI is KVM_IRQ_ROUTING_MSI.
const routeTypeMSI = 2

// maxRoutes bounds the routes we install: the pins of one IOAPIC.
const maxRoutes = 64

type routingEntry struct {
	GSI   uint32
	Type  uint32
	Flags uint32
	_     uint32
	// The MSI member of the union: address_lo, address_hi, data, pad,
	// then the rest of the union's 32 bytes.
	AddressLo uint32
	AddressHi uint32
	Data      uint32
	_         [5]uint32
}

type irqRouting struct {
	NR      uint32
	Flags   uint32
	Entries [maxRoutes]routingEntry
}

// MSIRoute routes interrupt line GSI to a message-signalled interrupt.
type MSIRoute struct {
	GSI uint32
	MSI MSI
}

// SetGSIRouting replaces the VM's interrupt routing table. With a split
// irqchip, IRQLine on a routed GSI sends its MSI, and KVM reports the EOI of
// level-triggered routes below the reserved IOAPIC pin count as
// ExitIOAPICEOI.
func (v *VM) SetGSIRouting(routes []MSIRoute) error {
	if len(routes) > maxRoutes {
		return fmt.Errorf("KVM_SET_GSI_ROUTING: %d routes, at most %d", len(routes), maxRoutes)
	}
	var r irqRouting
	r.NR = uint32(len(routes))
	for i, rt := range routes {
		r.Entries[i] = routingEntry{GSI: rt.GSI, Type: routeTypeMSI, AddressLo: rt.MSI.AddressLo, AddressHi: rt.MSI.AddressHi, Data: rt.MSI.Data}
	}
	if _, err := ioctlVar(v.fd, reqSetGSIRouting, &r); err != nil {
		return fmt.Errorf("KVM_SET_GSI_ROUTING: %w", err)
	}
	return nil
}
