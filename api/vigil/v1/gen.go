// Package vigilv1 holds the agent API: the protobuf definitions and the
// generated Go code (committed; `make generate` rebuilds it).
package vigilv1

//go:generate protoc -I . -I /usr/include --plugin=protoc-gen-go=../../../bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative vigil.proto filter.proto
