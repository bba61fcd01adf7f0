// Package labproto is the contract between the lab's host side (package lab)
// and its L1 init (internal/lab/l1init): file and port names, the run request,
// and the status lines init reports.
//
// It uses the standard library only, because the lab builds L1's init from its
// embedded sources outside this module.
package labproto

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Paths inside L1's initramfs.
const (
	// ModulesPath lists the kernel modules init loads, dependencies
	// first, one line each (see FormatModuleLine).
	ModulesPath = "/lab/modules"
	// RequestPath holds the JSON-encoded Request of the current run.
	RequestPath = "/lab/request.json"
)

// Names of the virtio serial ports that connect L1 to the host.
const (
	PortStdout = "bunkerlab.stdout"
	PortStderr = "bunkerlab.stderr"
	PortStatus = "bunkerlab.status"
)

// MountTag is the 9p mount tag under which the host exports its root.
const MountTag = "bunkerlab.root"

// HostRoot is where init mounts the host's root before it chroots into it,
// so that every host path keeps its meaning inside L1.
const HostRoot = "/host"

// EnvInside is set to "1" in the environment of commands run by the lab.
const EnvInside = "BUNKERBUILD_LAB"

// Request is what the host asks init to run.
type Request struct {
	Args []string `json:"args"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir"`
}

// EncodeRequest returns r as JSON.
func EncodeRequest(r Request) ([]byte, error) {
	if len(r.Args) == 0 {
		return nil, fmt.Errorf("encode request: no command")
	}
	return json.Marshal(r)
}

// DecodeRequest parses JSON written by EncodeRequest.
func DecodeRequest(b []byte) (Request, error) {
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return Request{}, fmt.Errorf("decode request: %w", err)
	}
	if len(r.Args) == 0 {
		return Request{}, fmt.Errorf("decode request: no command")
	}
	return r, nil
}

// Kind says what a status line reports.
type Kind string

const (
	// Ready: init set L1 up, /dev/kvm works and the host tree is
	// mounted; Detail describes L1.
	Ready Kind = "ready"
	// Exit: the command exited with Code.
	Exit Kind = "exit"
	// Signal: the command was killed by signal Code.
	Signal Kind = "signal"
	// Fail: init could not set up L1 or start the command; Detail says why.
	Fail Kind = "fail"
)

// marker starts every status line, so that a stray line is never mistaken
// for a status.
const marker = "bunkerlab-status:"

// Status is one line reported by init on the status port.
type Status struct {
	Kind   Kind
	Code   int    // for Exit and Signal
	Detail string // for Ready and Fail
}

// Format returns s as a status line, newline included. Newlines in Detail
// are replaced by spaces.
func (s Status) Format() string {
	switch s.Kind {
	case Exit, Signal:
		return fmt.Sprintf("%s %s %d\n", marker, s.Kind, s.Code)
	default:
		return fmt.Sprintf("%s %s %s\n", marker, s.Kind, strings.ReplaceAll(s.Detail, "\n", " "))
	}
}

// ParseStatus parses a line produced by Status.Format, with or without its
// trailing newline.
func ParseStatus(line string) (Status, error) {
	rest, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), marker+" ")
	if !ok {
		return Status{}, fmt.Errorf("parse status %q: no %q marker", line, marker)
	}
	kind, arg, _ := strings.Cut(rest, " ")
	switch k := Kind(kind); k {
	case Ready, Fail:
		return Status{Kind: k, Detail: arg}, nil
	case Exit, Signal:
		code, err := strconv.Atoi(arg)
		if err != nil || code < 0 {
			return Status{}, fmt.Errorf("parse status %q: bad code %q", line, arg)
		}
		return Status{Kind: k, Code: code}, nil
	default:
		return Status{}, fmt.Errorf("parse status %q: unknown kind %q", line, kind)
	}
}

// TmpDir is the tmpfs inside L1 that CommandEnv offers as TMPDIR: files
// there stay in L1's memory instead of crossing 9p to the host.
const TmpDir = "/dev/shm"

// DefaultPath is the PATH used to find the command when env sets none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// CommandEnv returns the environment the command runs with: env, plus
// EnvInside=1, plus TMPDIR=TmpDir unless env sets TMPDIR.
func CommandEnv(env []string) []string {
	out := make([]string, 0, len(env)+2)
	hasTmp := false
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case EnvInside:
			continue
		case "TMPDIR":
			hasTmp = true
		}
		out = append(out, kv)
	}
	out = append(out, EnvInside+"=1")
	if !hasTmp {
		out = append(out, "TMPDIR="+TmpDir)
	}
	return out
}

// LookupEnv returns the value of key in env, as os.LookupEnv does for the
// process environment (the last setting wins).
func LookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// cpuCond prefixes the CPU flag a module line may require.
const cpuCond = "if-cpu="

// FormatModuleLine returns the line of ModulesPath for the uncompressed
// module file path, to be loaded only if /proc/cpuinfo lists cpuFlag (if
// cpuFlag is not empty).
func FormatModuleLine(path, cpuFlag string) string {
	if cpuFlag == "" {
		return path + "\n"
	}
	return path + " " + cpuCond + cpuFlag + "\n"
}

// ParseModuleLine parses a line written by FormatModuleLine.
func ParseModuleLine(line string) (path, cpuFlag string, err error) {
	f := strings.Fields(line)
	switch {
	case len(f) == 1:
		return f[0], "", nil
	case len(f) == 2 && strings.HasPrefix(f[1], cpuCond) && len(f[1]) > len(cpuCond):
		return f[0], strings.TrimPrefix(f[1], cpuCond), nil
	default:
		return "", "", fmt.Errorf("parse module line %q: want PATH [%sFLAG]", line, cpuCond)
	}
}
