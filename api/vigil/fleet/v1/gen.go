// Package fleetv1 holds the fleet API: the protobuf definitions and the
// generated Go code (committed; `make generate` rebuilds it).
package fleetv1

//go:generate protoc -I . -I ../../v1 -I /usr/include --plugin=protoc-gen-go=../../../../bin/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../../bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go_opt=Mvigil.proto=github.com/vigil-hips/vigil/api/vigil/v1 --go-grpc_out=. --go-grpc_opt=paths=source_relative fleet.proto
