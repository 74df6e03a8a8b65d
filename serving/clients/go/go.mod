module example.com/textserve/tfsclient

go 1.19

// Versions that still build with Go 1.19 (Debian bookworm's); newer ones work too.
require (
	google.golang.org/grpc v1.58.3
	google.golang.org/protobuf v1.31.0
)
