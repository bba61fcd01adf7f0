package virtio

import (
	"fmt"
	"sync"
)

// Device status bits (virtio 1.x, 2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 64
	StatusFailed      = 128
)

// FeatureVersion1 is VIRTIO_F_VERSION_1: a modern device. Every device
// here offers it and refuses a driver that does not accept it.
const FeatureVersion1 = 1 << 32

// FeatureIndirectDesc is VIRTIO_F_INDIRECT_DESC: a chain may be one
// descriptor pointing at a table of them, so that a large request takes
// one ring slot. Every device here offers it (Queue walks such tables
// as hostile as direct chains).
const FeatureIndirectDesc = 1 << 28

// Status is the device status and feature negotiation every virtio
// device shares, whatever its transport: the driver acknowledges the
// device, reads the offered features, writes the subset it accepts, sets
// FEATURES_OK (which the device clears again if the subset is not one it
// offered, or lacks VERSION_1), and finally DRIVER_OK. Writing 0 resets.
type Status struct {
	mu       sync.Mutex
	offered  uint64
	accepted uint64
	status   uint8
}

// FeatureEventIdx is VIRTIO_RING_F_EVENT_IDX: driver and device ask for
// interrupts and kicks by ring index (used_event, avail_event), so that a
// busy queue costs neither. Every device here offers it.
const FeatureEventIdx = 1 << 29

// NewStatus returns the negotiation state of a device offering features
// (FeatureVersion1, FeatureIndirectDesc and FeatureEventIdx are added).
func NewStatus(offered uint64) *Status {
	return &Status{offered: offered | FeatureVersion1 | FeatureIndirectDesc | FeatureEventIdx}
}

// Offered returns the features the device offers.
func (s *Status) Offered() uint64 { return s.offered }

// Accept records the features the driver writes. It is ignored once
// FEATURES_OK is set, as the spec requires of the driver.
func (s *Status) Accept(features uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status&StatusFeaturesOK == 0 {
		s.accepted = features
	}
}

// Accepted returns the negotiated features.
func (s *Status) Accepted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Get returns the status byte.
func (s *Status) Get() uint8 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Set applies a driver write of the status byte and reports whether it
// was a reset (0), after which the device must reset its queues. Bits the
// driver may not set are dropped; FEATURES_OK stays clear if the accepted
// features are not a subset of the offered ones with VERSION_1; DRIVER_OK
// needs FEATURES_OK.
func (s *Status) Set(v uint8) (reset bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v == 0 {
		s.status, s.accepted = 0, 0
		return true
	}
	v &= StatusAcknowledge | StatusDriver | StatusDriverOK | StatusFeaturesOK | StatusFailed
	if v&StatusFeaturesOK != 0 && s.status&StatusFeaturesOK == 0 {
		if s.accepted&^s.offered != 0 || s.accepted&FeatureVersion1 == 0 {
			v &^= StatusFeaturesOK
		}
	}
	if v&StatusDriverOK != 0 && v&StatusFeaturesOK == 0 {
		v &^= StatusDriverOK
	}
	s.status = v | s.status&StatusNeedsReset
	return false
}

// Live reports whether the driver has finished setting the device up and
// the device has not asked for a reset.
func (s *Status) Live() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status&StatusDriverOK != 0 && s.status&StatusNeedsReset == 0
}

// NeedsReset puts the device in the needs-reset state, after the driver
// broke a queue; the transport tells the driver with a configuration
// change interrupt. It returns the reason, for the VMM's log.
func (s *Status) NeedsReset(why error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status |= StatusNeedsReset
	return fmt.Errorf("virtio device needs a reset: %w", why)
}

// Restore sets the status and accepted features of a restored device.
// The features must be ones this device offers, and a status past
// FEATURES_OK must have accepted VERSION_1, as Set would have required.
func (s *Status) Restore(status uint8, accepted uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	const known = StatusAcknowledge | StatusDriver | StatusDriverOK | StatusFeaturesOK | StatusNeedsReset | StatusFailed
	switch {
	case status&^known != 0:
		return fmt.Errorf("virtio: saved status %#x has undefined bits", status)
	case accepted&^s.offered != 0:
		return fmt.Errorf("virtio: the guest accepted features %#x that this device does not offer (it offers %#x)", accepted&^s.offered, s.offered)
	case status&StatusFeaturesOK != 0 && accepted&FeatureVersion1 == 0:
		return fmt.Errorf("virtio: saved status %#x without VERSION_1", status)
	case status&StatusDriverOK != 0 && status&StatusFeaturesOK == 0:
		return fmt.Errorf("virtio: saved status %#x has DRIVER_OK without FEATURES_OK", status)
	}
	s.status, s.accepted = status, accepted
	return nil
}
