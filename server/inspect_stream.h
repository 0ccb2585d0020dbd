// One Inspect stream (bidirectional): requests are read as they come and run through the
// pipeline; responses are written in completion order, one write at a time, matched by
// request id. A request counts against the stream's bound from the moment it is read until its
// response is written, so a client that stops reading stops being read: memory per stream is
// bounded by `max_unwritten` responses. The stream finishes when the client has closed its side
// and every response is written.
#pragma once

#include <grpcpp/grpcpp.h>

#include "anoclip/v1/anoclip.pb.h"
#include "server/admission.h"
#include "server/detect_pipeline.h"
#include "server/metrics.h"

namespace anoclip::server {

struct StreamOptions {
  int max_unwritten = 128;  // requests read and not yet answered on the wire, per stream
};

// Starts a reactor for `context`; it deletes itself when gRPC is done with it.
grpc::ServerBidiReactor<anoclip::v1::InspectRequest, anoclip::v1::InspectResponse>* StartInspectStream(
    grpc::CallbackServerContext* context, Admission* admission, DetectPipeline* pipeline, ServiceMetrics* metrics,
    const StreamOptions& options);

}  // namespace anoclip::server
