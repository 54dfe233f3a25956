/**
 * A failed call's details. chat-service puts a `google.rpc.Status` (serialized) in the
 * `grpc-status-details-bin` trailer: its `details` are `google.protobuf.Any`s holding an `ErrorInfo` (always),
 * a `BadRequest` (INVALID_ARGUMENT: which field, why) and a `RetryInfo` (RESOURCE_EXHAUSTED: when to retry).
 * grpc-js hands the trailer over as `error.metadata` but does not decode it; protobufjs does, from
 * `protos/google/rpc/*.proto`.
 */
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protobuf from "protobufjs";

import type { Any__Output } from "./generated/google/protobuf/Any";
import type { BadRequest__Output } from "./generated/google/rpc/BadRequest";
import type { ErrorInfo__Output } from "./generated/google/rpc/ErrorInfo";
import type { RetryInfo__Output } from "./generated/google/rpc/RetryInfo";
import type { Status__Output } from "./generated/google/rpc/Status";

export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** The shapes proto-loader gives messages (and the generated `__Output` types describe): one for both. */
export const CONVERSION: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, oneofs: true };

/** The decoded details of a failed call; a detail the server did not send is absent. */
export interface ErrorDetails {
  errorInfo?: ErrorInfo__Output;
  badRequest?: BadRequest__Output;
  retryInfo?: RetryInfo__Output;
  /** Details of other types, still packed. */
  other: Any__Output[];
}

/** A failed call: the gRPC status with its decoded `google.rpc` details. */
export class ChatError extends Error {
  override readonly name = "ChatError";

  constructor(
    readonly code: grpc.status,
    message: string,
    readonly details: ErrorDetails,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }

  /** The status code's name, e.g. `INVALID_ARGUMENT`. */
  get codeName(): string {
    return grpc.status[this.code] ?? `CODE_${this.code}`;
  }

  /** The server's reason for the error (ErrorInfo.reason, e.g. `NOT_FOUND`, `MODEL_UNAVAILABLE`), or "". */
  get reason(): string {
    return this.details.errorInfo?.reason ?? "";
  }

  /** How long the server asks us to wait before retrying (RetryInfo.retry_delay), in milliseconds. */
  get retryDelayMs(): number | undefined {
    const delay = this.details.retryInfo?.retryDelay;
    return delay ? Number(delay.seconds) * 1000 + delay.nanos / 1e6 : undefined;
  }
}

function isServiceError(error: unknown): error is grpc.ServiceError {
  return error instanceof Error && "code" in error && "metadata" in error && error.metadata instanceof grpc.Metadata;
}

/** Decodes `google.rpc.Status` and its details, with the types from `protos/google/rpc`. */
export class StatusDecoder {
  private readonly root: protobuf.Root;

  constructor(protosDir: string) {
    this.root = new protobuf.Root();
    // Imports resolve against protosDir; google/protobuf/*.proto are protobufjs's own bundled copies.
    this.root.resolvePath = (_origin, target) => path.join(protosDir, target);
    this.root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
  }

  /** The ChatError for a failed call (a grpc-js ServiceError); anything else is returned as it is. */
  toChatError(error: unknown): unknown {
    if (!isServiceError(error)) {
      return error;
    }
    const [trailer] = error.metadata.get(STATUS_DETAILS_KEY);
    const status = trailer instanceof Buffer ? this.decodeStatus(trailer) : undefined;
    // error.details is the status message as the server sent it; error.message prefixes the code.
    return new ChatError(error.code, status?.message ?? error.details, this.unpack(status?.details ?? []), {
      cause: error,
    });
  }

  /** A serialized google.rpc.Status (the trailer's bytes). */
  decodeStatus(bytes: Uint8Array): Status__Output {
    return this.decode<Status__Output>("google.rpc.Status", bytes);
  }

  private unpack(details: Any__Output[]): ErrorDetails {
    const found: ErrorDetails = { other: [] };
    for (const detail of details) {
      // A type URL is `type.googleapis.com/<full message name>`: the name follows the last slash.
      const name = detail.type_url.slice(detail.type_url.lastIndexOf("/") + 1);
      if (name === "google.rpc.ErrorInfo") {
        found.errorInfo = this.decode<ErrorInfo__Output>(name, detail.value);
      } else if (name === "google.rpc.BadRequest") {
        found.badRequest = this.decode<BadRequest__Output>(name, detail.value);
      } else if (name === "google.rpc.RetryInfo") {
        found.retryInfo = this.decode<RetryInfo__Output>(name, detail.value);
      } else {
        found.other.push(detail);
      }
    }
    return found;
  }

  private decode<T>(name: string, bytes: Uint8Array): T {
    const type = this.root.lookupType(name);
    // The generated __Output type describes what toObject gives with these options.
    return type.toObject(type.decode(bytes), CONVERSION) as T;
  }
}
