package main

// The wire fixtures shared with Python and Rust: every message type decodes from its golden
// bytes to the values in its JSON twin and encodes back to the same bytes; every delete-marker
// payload decodes to the values in markers.json and encodes back to the same bytes.

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	msgbusv1 "msgbus.test/interop/gen/msgbus/v1"
)

// deleteMarker is the original's tombstone JSON, fields in serde's order.
type deleteMarker struct {
	Topic  string `json:"topic"`
	Origin struct {
		TenantID string `json:"tenant_id"`
		BlName   string `json:"bl_name"`
		DeviceID string `json:"device_id"`
	} `json:"origin"`
	FromHeadID  uint64 `json:"from_head_id"`
	ToHeadID    uint64 `json:"to_head_id"`
	CreatedAtMs uint64 `json:"created_at_ms"`
}

type markerCase struct {
	File   string       `json:"file"`
	Marker deleteMarker `json:"marker"`
}

func runFixtures(args []string) {
	flags, _ := newFlags("fixtures")
	dir := flags.String("dir", "", "the fixtures folder")
	_ = flags.Parse(args)
	check(*dir != "", "fixtures needs -dir")
	checkWireFixtures(filepath.Join(*dir, "wire"))
	checkMarkerFixtures(*dir)
}

type wireCase struct {
	Message string `json:"message"`
	Maps    bool   `json:"maps"`
}

func checkWireFixtures(dir string) {
	index, err := os.ReadFile(filepath.Join(dir, "index.json"))
	noErr(err, "read wire index")
	var cases []wireCase
	noErr(json.Unmarshal(index, &cases), "wire index")
	messages := msgbusv1.File_msgbus_v1_msgbus_proto.Messages()
	check(len(cases) == messages.Len(), "%d wire fixtures for %d message types", len(cases), messages.Len())
	exact := 0
	for _, c := range cases {
		kind, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName("msgbus.v1." + c.Message))
		noErr(err, "message type "+c.Message)
		golden, err := os.ReadFile(filepath.Join(dir, c.Message+".bin"))
		noErr(err, "read "+c.Message)
		document, err := os.ReadFile(filepath.Join(dir, c.Message+".json"))
		noErr(err, "read JSON of "+c.Message)

		decoded := kind.New().Interface()
		noErr(proto.Unmarshal(golden, decoded), "decode "+c.Message)
		expected := kind.New().Interface()
		noErr(protojson.Unmarshal(document, expected), "JSON of "+c.Message)
		check(proto.Equal(decoded, expected), "%s decodes to %v, want %v", c.Message, decoded, expected)
		encoded, err := proto.MarshalOptions{Deterministic: true}.Marshal(expected)
		noErr(err, "encode "+c.Message)
		check(hasMap(kind.Descriptor()) == c.Maps, "%s: the index says maps=%v", c.Message, c.Maps)
		if c.Maps {
			again := kind.New().Interface()
			noErr(proto.Unmarshal(encoded, again), "decode re-encoded "+c.Message)
			check(proto.Equal(again, expected), "%s re-encodes to other values: %v", c.Message, again)
			continue
		}
		exact++
		check(bytes.Equal(encoded, golden), "%s encodes to %x, want %x", c.Message, encoded, golden)
	}
	ok("wire fixtures: %d message types decode to their values; %d encode to the golden bytes, %d with maps to the same values",
		len(cases), exact, len(cases)-exact)
}

func hasMap(message protoreflect.MessageDescriptor) bool {
	fields := message.Fields()
	for i := 0; i < fields.Len(); i++ {
		field := fields.Get(i)
		if field.IsMap() || (field.Message() != nil && hasMap(field.Message())) {
			return true
		}
	}
	return false
}

func checkMarkerFixtures(dir string) {
	manifest, err := os.ReadFile(filepath.Join(dir, "markers.json"))
	noErr(err, "read markers.json")
	var cases []markerCase
	noErr(json.Unmarshal(manifest, &cases), "markers.json")
	check(len(cases) > 0, "markers.json lists no marker")
	for _, c := range cases {
		payload, err := os.ReadFile(filepath.Join(dir, "markers", c.File))
		noErr(err, "read marker "+c.File)
		var marker deleteMarker
		noErr(json.Unmarshal(payload, &marker), "decode marker "+c.File)
		check(marker == c.Marker, "marker %s decodes to %+v, want %+v", c.File, marker, c.Marker)
		var out bytes.Buffer
		encoder := json.NewEncoder(&out)
		encoder.SetEscapeHTML(false) // serde_json does not escape <, > and &
		noErr(encoder.Encode(marker), "encode marker "+c.File)
		check(bytes.Equal(bytes.TrimSuffix(out.Bytes(), []byte("\n")), payload),
			"marker %s encodes to %s, want %s", c.File, out.Bytes(), payload)
	}
	ok("delete-marker fixtures: %d payloads decode and encode byte for byte", len(cases))
}
