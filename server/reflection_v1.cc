#include "server/reflection_v1.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/generic_stub.h>

#include "grpc/health/v1/health.pb.h"

namespace anoclip::server {
namespace {

using grpc::reflection::v1::ServerReflectionRequest;
using grpc::reflection::v1::ServerReflectionResponse;

constexpr char kV1AlphaMethod[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

// One operation at a time is outstanding on `queue`, so the next event is that operation's.
bool Await(grpc::CompletionQueue& queue) {
  void* tag = nullptr;
  bool ok = false;
  return queue.Next(&tag, &ok) && ok;
}

}  // namespace

void ReflectionV1Service::RegisterWith(grpc::ServerBuilder& builder) {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // gRPC's health service encodes its messages by hand; referencing the generated ones links
  // their descriptors into the pool that reflection answers from.
  grpc::health::v1::HealthCheckResponse::descriptor();
  builder.RegisterService(this);
}

void ReflectionV1Service::Attach(grpc::Server* server) {
  absl::MutexLock lock(&mutex_);
  channel_ = server->InProcessChannel(grpc::ChannelArguments());
}

grpc::Status ReflectionV1Service::ServerReflectionInfo(
    grpc::ServerContext* context, grpc::ServerReaderWriter<ServerReflectionResponse, ServerReflectionRequest>* stream) {
  std::shared_ptr<grpc::Channel> channel;
  {
    absl::MutexLock lock(&mutex_);
    channel = channel_;
  }
  if (channel == nullptr) return grpc::Status(grpc::UNAVAILABLE, "the server is starting");

  grpc::TemplatedGenericStub<ServerReflectionRequest, ServerReflectionResponse> stub(channel);
  grpc::ClientContext relay_context;
  relay_context.set_deadline(context->deadline());
  grpc::CompletionQueue queue;
  auto relay = stub.PrepareCall(&relay_context, kV1AlphaMethod, &queue);
  grpc::Status status;
  relay->StartCall(nullptr);
  bool relay_ok = Await(queue);
  ServerReflectionRequest request;
  ServerReflectionResponse response;
  while (relay_ok && stream->Read(&request)) {
    if (context->IsCancelled()) break;
    relay->Write(request, nullptr);
    if (!(relay_ok = Await(queue))) break;
    relay->Read(&response, nullptr);
    if (!(relay_ok = Await(queue))) break;
    if (!stream->Write(response)) break;
  }
  if (relay_ok) {
    relay->WritesDone(nullptr);
    Await(queue);
  } else {
    relay_context.TryCancel();
  }
  relay->Finish(&status, nullptr);
  Await(queue);
  queue.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (queue.Next(&tag, &ok)) {
  }
  return relay_ok ? grpc::Status::OK : status;
}

}  // namespace anoclip::server
