package kvm

// Request codes, built like the _IO/_IOR/_IOW/_IOWR macros of
// <asm-generic/ioctl.h>. The sizes are the sizes of the C structs; the
// tests compare every code with the one the C headers produce.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	kvmio = 0xAE
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | kvmio<<8 | nr
}

func io(nr uintptr) uintptr         { return ioc(iocNone, nr, 0) }
func ior(nr, size uintptr) uintptr  { return ioc(iocRead, nr, size) }
func iow(nr, size uintptr) uintptr  { return ioc(iocWrite, nr, size) }
func iowr(nr, size uintptr) uintptr { return ioc(iocRead|iocWrite, nr, size) }
func sizeField(req uintptr) uintptr { return req >> 16 & 0x3fff }

// System ioctls (on /dev/kvm).
var (
	reqGetAPIVersion     = io(0x00)
	reqCreateVM          = io(0x01)
	reqGetMSRIndexList   = iowr(0x02, 4)
	reqCheckExtension    = io(0x03)
	reqGetVCPUMmapSize   = io(0x04)
	reqGetSupportedCPUID = iowr(0x05, 8)
	reqGetMSRFeatureList = iowr(0x0a, 4)
)

// VM ioctls.
var (
	reqCreateVCPU          = io(0x41)
	reqSetUserMemoryRegion = iow(0x46, 32)
	reqSetTSSAddr          = io(0x47)
	reqSetIdentityMapAddr  = iow(0x48, 8)
	reqCreateIRQChip       = io(0x60)
	reqIRQLine             = iow(0x61, 8)
	reqGetIRQChip          = iowr(0x62, 520)
	reqSetIRQChip          = ior(0x63, 520)
	reqCreatePIT2          = iow(0x77, 64)
	reqSetClock            = iow(0x7b, 48)
	reqGetClock            = ior(0x7c, 48)
	reqGetPIT2             = ior(0x9f, 112)
	reqSetPIT2             = iow(0xa0, 112)
	reqEnableCap           = iow(0xa3, 104)
	reqSetMSRFilter        = iow(0xc6, 392)
	reqSignalMSI           = iow(0xa5, 32)
	reqSetGSIRouting       = iow(0x6a, 8)
	reqIOEventFD           = iow(0x79, 64)
)

// vCPU ioctls.
var (
	reqRun           = io(0x80)
	reqGetRegs       = ior(0x81, 144)
	reqSetRegs       = iow(0x82, 144)
	reqGetSregs      = ior(0x83, 312)
	reqSetSregs      = iow(0x84, 312)
	reqGetMSRs       = iowr(0x88, 8)
	reqSetMSRs       = iow(0x89, 8)
	reqGetFPU        = ior(0x8c, 416)
	reqSetFPU        = iow(0x8d, 416)
	reqGetLAPIC      = ior(0x8e, 1024)
	reqSetLAPIC      = iow(0x8f, 1024)
	reqSetCPUID2     = iow(0x90, 8)
	reqGetCPUID2     = iowr(0x91, 8)
	reqGetMPState    = ior(0x98, 4)
	reqSetMPState    = iow(0x99, 4)
	reqGetVCPUEvents = ior(0x9f, 64)
	reqSetVCPUEvents = iow(0xa0, 64)
	reqGetDebugRegs  = ior(0xa1, 128)
	reqSetDebugRegs  = iow(0xa2, 128)
	reqSetTSCKHz     = io(0xa2)
	reqGetTSCKHz     = io(0xa3)
	reqGetXSave      = ior(0xa4, 4096)
	reqSetXSave      = iow(0xa5, 4096)
	reqGetXCRs       = ior(0xa6, 392)
	reqSetXCRs       = iow(0xa7, 392)
	reqKVMClockCtrl  = io(0xad)
	reqGetXSave2     = ior(0xcf, 4096)
)

// Capabilities, from <linux/kvm.h>.
type Cap uintptr

const (
	CapIRQChip               Cap = 0
	CapUserMemory            Cap = 3
	CapExtCPUID              Cap = 7
	CapNrVCPUs               Cap = 9
	CapPIT2                  Cap = 33
	CapAdjustClock           Cap = 39
	CapVCPUEvents            Cap = 41
	CapDebugRegs             Cap = 50
	CapXCRs                  Cap = 56
	CapTSCControl            Cap = 60
	CapGetTSCKHz             Cap = 61
	CapMaxVCPUs              Cap = 66
	CapTSCDeadlineTimer      Cap = 72
	CapKVMClockCtrl          Cap = 76
	CapReadonlyMem           Cap = 81
	CapIOEventFD             Cap = 36
	CapSplitIRQChip          Cap = 121
	CapX2APICAPI             Cap = 129
	CapImmediateExit         Cap = 136
	CapX86UserSpaceMSR       Cap = 188
	CapX86MSRFilter          Cap = 189
	CapEnforcePVFeatureCPUID Cap = 190
	CapXSave2                Cap = 208
	CapPMUCapability         Cap = 212
)
