// Command tfsclient classifies texts through TF Serving's gRPC PredictionService/Predict.
//
//	PYTHON=../../../.venv/bin/python ./generate.sh   # once: stubs into ./gen
//	go run . -target localhost:8500 -model bbc_news "Shares rose after the merger"
//
// It works against `textserve serve` and against tensorflow_model_server alike,
// and prints the same JSON document as the Node.js example:
// {"model_spec": {...}, "predictions": [{label, score, class_id, probabilities}, ...]}.
// On failure it prints "CODE: message" (the gRPC status and the server's text)
// to stderr and exits 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tf "example.com/textserve/tfsclient/gen/tensorflow"
	tfs "example.com/textserve/tfsclient/gen/tensorflow_serving"
)

type prediction struct {
	Label         string    `json:"label"`
	Score         float32   `json:"score"`
	ClassID       int64     `json:"class_id"`
	Probabilities []float32 `json:"probabilities"`
}

type modelSpec struct {
	Name          string `json:"name"`
	Version       string `json:"version"`
	SignatureName string `json:"signature_name"`
}

type answer struct {
	ModelSpec   modelSpec    `json:"model_spec"`
	Predictions []prediction `json:"predictions"`
}

func main() {
	target := flag.String("target", envOr("TFS_GRPC_TARGET", "localhost:8500"), "gRPC host:port of the model server")
	model := flag.String("model", envOr("MODEL_NAME", "bbc_news"), "served model name")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of the call")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: tfsclient [-target HOST:PORT] [-model NAME] [-timeout 10s] TEXT...")
		os.Exit(2)
	}
	if err := run(*target, *model, *timeout, flag.Args()); err != nil {
		if s, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "%s: %s\n", codeName(s.Code()), s.Message())
		} else {
			fmt.Fprintf(os.Stderr, "ERROR: %v\n", err)
		}
		os.Exit(1)
	}
}

func run(target, model string, timeout time.Duration, texts []string) error {
	// TF Serving accepts messages up to 2 GiB; lift grpc-go's 4 MB receive limit to match.
	conn, err := grpc.Dial(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(math.MaxInt32)))
	if err != nil {
		return err
	}
	defer conn.Close()

	values := make([][]byte, len(texts))
	for i, text := range texts {
		values[i] = []byte(text)
	}
	request := &tfs.PredictRequest{
		ModelSpec: &tfs.ModelSpec{Name: model, SignatureName: "serving_default"},
		Inputs: map[string]*tf.TensorProto{
			"text": {
				Dtype:       tf.DataType_DT_STRING,
				TensorShape: &tf.TensorShapeProto{Dim: []*tf.TensorShapeProto_Dim{{Size: int64(len(texts))}}},
				StringVal:   values,
			},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	response, err := tfs.NewPredictionServiceClient(conn).Predict(ctx, request)
	if err != nil {
		return err
	}

	out := response.GetOutputs()
	for _, name := range []string{"label", "score", "class_id", "probabilities"} {
		if out[name] == nil {
			return fmt.Errorf("the answer has no %q output; is this a textserve text classifier?", name)
		}
	}
	// The server fills the typed fields (float_val, ...), as TF Serving does by
	// default; tensor_content (--enable_serialization_as_tensor_content) is not decoded here.
	probabilities := out["probabilities"].GetFloatVal()
	width := len(probabilities) / len(texts)
	result := answer{ModelSpec: modelSpec{
		Name:          response.GetModelSpec().GetName(),
		Version:       strconv.FormatInt(response.GetModelSpec().GetVersion().GetValue(), 10),
		SignatureName: response.GetModelSpec().GetSignatureName(),
	}}
	for i := range texts {
		result.Predictions = append(result.Predictions, prediction{
			Label:         string(out["label"].GetStringVal()[i]),
			Score:         out["score"].GetFloatVal()[i],
			ClassID:       out["class_id"].GetInt64Val()[i],
			Probabilities: probabilities[i*width : (i+1)*width],
		})
	}
	return json.NewEncoder(os.Stdout).Encode(result)
}

// canonicalCodes are the status code names as TF Serving and the other clients
// print them (grpc-go's String() says "NotFound", "Canceled").
var canonicalCodes = []string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
	"OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

func codeName(code codes.Code) string {
	if int(code) < len(canonicalCodes) {
		return canonicalCodes[code]
	}
	return code.String()
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
