package labproto

import (
	"slices"
	"testing"
)

func TestParseStatus(t *testing.T) {
	tests := []struct {
		line    string
		want    Status
		wantErr bool
	}{
		{line: "bunkerlab-status: exit 0\n", want: Status{Kind: Exit, Code: 0}},
		{line: "bunkerlab-status: exit 7", want: Status{Kind: Exit, Code: 7}},
		{line: "bunkerlab-status: signal 9\r\n", want: Status{Kind: Signal, Code: 9}},
		{line: "bunkerlab-status: ready /dev/kvm ok (api 12)\n", want: Status{Kind: Ready, Detail: "/dev/kvm ok (api 12)"}},
		{line: "bunkerlab-status: fail mount 9p: no such device\n", want: Status{Kind: Fail, Detail: "mount 9p: no such device"}},
		{line: "bunkerlab-status: exit\n", wantErr: true},
		{line: "bunkerlab-status: exit -1\n", wantErr: true},
		{line: "bunkerlab-status: exit seven\n", wantErr: true},
		{line: "bunkerlab-status: done 0\n", wantErr: true},
		{line: "exit 0\n", wantErr: true},
		{line: "[    4.1] bunkerlab-status: exit 0\n", wantErr: true},
		{line: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseStatus(tt.line)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseStatus(%q) error = %v, want error %t", tt.line, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseStatus(%q) = %+v, want %+v", tt.line, got, tt.want)
		}
	}
}

func TestStatusRoundTrip(t *testing.T) {
	for _, st := range []Status{
		{Kind: Exit, Code: 0},
		{Kind: Exit, Code: 255},
		{Kind: Signal, Code: 15},
		{Kind: Ready, Detail: "kvm ok; kernel 6.12"},
		{Kind: Fail, Detail: "line one\nline two"},
	} {
		line := st.Format()
		got, err := ParseStatus(line)
		if err != nil {
			t.Fatalf("ParseStatus(%q): %v", line, err)
		}
		want := st
		if st.Kind == Fail {
			want.Detail = "line one line two"
		}
		if got != want {
			t.Errorf("ParseStatus(%q) = %+v, want %+v", line, got, want)
		}
	}
}

func TestModuleLine(t *testing.T) {
	tests := []struct {
		path, flag string
		line       string
	}{
		{"/lib/modules/6.12/kernel/fs/9p/9p.ko", "", "/lib/modules/6.12/kernel/fs/9p/9p.ko\n"},
		{"/lib/modules/6.12/kernel/arch/x86/kvm/kvm-amd.ko", "svm", "/lib/modules/6.12/kernel/arch/x86/kvm/kvm-amd.ko if-cpu=svm\n"},
	}
	for _, tt := range tests {
		if got := FormatModuleLine(tt.path, tt.flag); got != tt.line {
			t.Errorf("FormatModuleLine(%q, %q) = %q, want %q", tt.path, tt.flag, got, tt.line)
		}
		path, flag, err := ParseModuleLine(tt.line)
		if err != nil || path != tt.path || flag != tt.flag {
			t.Errorf("ParseModuleLine(%q) = %q, %q, %v; want %q, %q", tt.line, path, flag, err, tt.path, tt.flag)
		}
	}
	for _, bad := range []string{"", "a.ko b.ko", "a.ko if-cpu=", "a.ko cpu=svm", "a.ko if-cpu=svm x"} {
		if _, _, err := ParseModuleLine(bad); err == nil {
			t.Errorf("ParseModuleLine(%q) succeeded, want error", bad)
		}
	}
}

func TestCommandEnv(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"empty", nil, []string{"BUNKERBUILD_LAB=1", "TMPDIR=/dev/shm"}},
		{"keeps TMPDIR", []string{"PATH=/bin", "TMPDIR=/var/tmp"}, []string{"PATH=/bin", "TMPDIR=/var/tmp", "BUNKERBUILD_LAB=1"}},
		{"replaces marker", []string{"BUNKERBUILD_LAB=0", "HOME=/root"}, []string{"HOME=/root", "BUNKERBUILD_LAB=1", "TMPDIR=/dev/shm"}},
		{"TMPDIR prefix is not TMPDIR", []string{"TMPDIRX=1"}, []string{"TMPDIRX=1", "BUNKERBUILD_LAB=1", "TMPDIR=/dev/shm"}},
	}
	for _, tt := range tests {
		if got := CommandEnv(tt.env); !slices.Equal(got, tt.want) {
			t.Errorf("%s: CommandEnv(%q) = %q, want %q", tt.name, tt.env, got, tt.want)
		}
	}
}

func TestLookupEnv(t *testing.T) {
	env := []string{"PATH=/bin", "A=1", "PATH=/usr/bin", "EMPTY="}
	tests := []struct {
		key, want string
		ok        bool
	}{
		{"PATH", "/usr/bin", true},
		{"A", "1", true},
		{"EMPTY", "", true},
		{"PAT", "", false},
	}
	for _, tt := range tests {
		if got, ok := LookupEnv(env, tt.key); got != tt.want || ok != tt.ok {
			t.Errorf("LookupEnv(%q) = %q, %t; want %q, %t", tt.key, got, ok, tt.want, tt.ok)
		}
	}
}

func TestRequestRoundTrip(t *testing.T) {
	r := Request{Args: []string{"/bin/sh", "-c", "exit 7"}, Env: []string{"A=1"}, Dir: "/tmp"}
	b, err := EncodeRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Args, r.Args) || !slices.Equal(got.Env, r.Env) || got.Dir != r.Dir {
		t.Errorf("DecodeRequest(EncodeRequest(%+v)) = %+v", r, got)
	}
	if _, err := EncodeRequest(Request{}); err == nil {
		t.Error("EncodeRequest with no command succeeded")
	}
	for _, bad := range []string{`{"args":[]}`, `{`, `{"args":"sh"}`} {
		if _, err := DecodeRequest([]byte(bad)); err == nil {
			t.Errorf("DecodeRequest(%s) succeeded", bad)
		}
	}
}
