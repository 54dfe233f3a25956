/**
 * ChatClient: chat-service over grpc-js, its types from proto-loader reading `protos/` at run time (the
 * TypeScript interfaces in src/generated come from the same files, by proto-loader-gen-types, at build time).
 */
import { randomUUID } from "node:crypto";
import * as path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { CONVERSION, ChatError, StatusDecoder } from "./errors";
import type { ProtoGrpcType } from "./generated/chat";
import type { ChatServiceClient } from "./generated/chat/v1/ChatService";
import type { Conversation__Output } from "./generated/chat/v1/Conversation";
import type { CreateConversationRequest } from "./generated/chat/v1/CreateConversationRequest";
import type { CreateConversationResponse__Output } from "./generated/chat/v1/CreateConversationResponse";
import type { Message__Output } from "./generated/chat/v1/Message";
import type { ReplyEvent__Output } from "./generated/chat/v1/ReplyEvent";
import { ReplyText } from "./text";

/** The repository's protos/, seen from dist/ (or src/). */
export const DEFAULT_PROTOS_DIR = path.resolve(__dirname, "..", "..", "..", "protos");

/** ErrorInfo reasons of a reply whose model failed: every reader gets that status, so resuming cannot help. */
const MODEL_REASONS = new Set(["MODEL_UNAVAILABLE", "MODEL_FAILED"]);
/** How a proxy (nginx, Envoy) in front of a replica that died ends a stream: reset (INTERNAL) or no status. */
const PROXY_BREAKS = new Set<grpc.status>([grpc.status.INTERNAL, grpc.status.UNKNOWN]);

export interface RetryPolicy {
  /** Attempts to resume a broken reply stream before giving up. */
  attempts: number;
  /** Wait before the first retry, doubled after each failure up to `maxBackoffMs`. */
  initialBackoffMs: number;
  maxBackoffMs: number;
}

export interface ChatClientOptions {
  /** Sent as `authorization: Bearer <apiKey>` (an API key or a JWT). */
  apiKey: string;
  /** Defaults to insecure (plain TCP); pass `grpc.credentials.createSsl()` for TLS. */
  credentials?: grpc.ChannelCredentials;
  /** Where chat/v1/chat.proto and google/rpc/*.proto are. */
  protosDir?: string;
  /** Deadline of unary calls (milliseconds). */
  timeoutMs?: number;
  retry?: RetryPolicy;
}

/** What a ReplyStream yields: the server's events, flattened, plus `resumed` after a break. */
export type ReplyEvent =
  | { kind: "started"; userMessage: Message__Output; assistantMessage: Message__Output }
  | { kind: "delta"; text: string; offset: number; generation: number }
  | { kind: "resumed"; offset: number }
  /**
   * The text from `offset` on was never stored (its replica stopped) and another replica continued the reply
   * from there: drop it (`replaced`) and show the deltas that follow instead.
   */
  | { kind: "rewind"; offset: number; generation: number; replaced: string }
  | { kind: "completed"; message: Message__Output };

export class ChatClient {
  private readonly stub: ChatServiceClient;
  private readonly decoder: StatusDecoder;
  private readonly metadata: grpc.Metadata;
  private readonly timeoutMs: number;
  readonly retry: RetryPolicy;

  constructor(address: string, options: ChatClientOptions) {
    const protosDir = options.protosDir ?? DEFAULT_PROTOS_DIR;
    const definition = protoLoader.loadSync("chat/v1/chat.proto", { ...CONVERSION, includeDirs: [protosDir] });
    const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    this.stub = new proto.chat.v1.ChatService(address, options.credentials ?? grpc.credentials.createInsecure());
    this.decoder = new StatusDecoder(protosDir);
    this.metadata = new grpc.Metadata();
    this.metadata.set("authorization", `Bearer ${options.apiKey}`);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.retry = options.retry ?? { attempts: 8, initialBackoffMs: 50, maxBackoffMs: 2_000 };
  }

  close(): void {
    this.stub.close();
  }

  async createConversation(request: CreateConversationRequest = {}): Promise<Conversation__Output> {
    const response = await this.unary<CreateConversationResponse__Output>((callback) =>
      this.stub.CreateConversation(request, this.metadata, this.callOptions(), callback),
    );
    if (!response.conversation) {
      throw new Error("CreateConversation returned no conversation");
    }
    return response.conversation;
  }

  /** Sends `content` and streams the reply; `requestId` makes a retry attach to the same reply. */
  streamReply(conversationId: string, content: string, requestId: string = randomUUID()): ReplyStream {
    return new ReplyStream(this, { conversationId, content, requestId });
  }

  /**
   * Follows a reply from code point `offset` (0 replays it all) until it ends. `generation`: that of the last
   * delta received (0: unknown), so that text another replica replaced since comes back as a rewind.
   */
  resumeReply(messageId: string, offset = 0, generation = 0): ReplyStream {
    return new ReplyStream(this, { messageId, offset, generation });
  }

  /** @internal One reply stream's call: StreamReply for a new reply, ResumeReply for an existing one. */
  openStream(
    start:
      | { conversationId: string; content: string; requestId: string }
      | { messageId: string; offset: number; generation: number },
  ): grpc.ClientReadableStream<{ event: ReplyEvent__Output | null }> {
    return "messageId" in start
      ? this.stub.ResumeReply(start, this.metadata)
      : this.stub.StreamReply(start, this.metadata);
  }

  /** A ChatError with the decoded google.rpc details for a failed call; other errors unchanged. */
  toChatError(error: unknown): unknown {
    return this.decoder.toChatError(error);
  }

  private callOptions(): grpc.CallOptions {
    return { deadline: Date.now() + this.timeoutMs };
  }

  private unary<T>(call: (callback: grpc.requestCallback<T>) => unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      call((error, response) => {
        if (error) {
          reject(this.toChatError(error));
        } else if (response === undefined) {
          reject(new Error("the call returned no response"));
        } else {
          resolve(response);
        }
      });
    });
  }
}

/** The server closed a reply stream before its `completed` event. */
class StreamBroken extends Error {}

/**
 * A reply as an async iterable of events. When the connection breaks (UNAVAILABLE, a stream a proxy reset, or a
 * stream that ends before `completed`), it calls ResumeReply from `text.offset`, the code points received so far, so the
 * deltas it yields concatenate to the reply exactly once. If the replica writing the reply stopped and another
 * continued it from stored text short of what this stream had received, a `rewind` event says where the text
 * is replaced from (`text` is kept exact: it always ends as the stored reply). A reply whose model failed is not resumed: its
 * ChatError (reason MODEL_UNAVAILABLE or MODEL_FAILED) is thrown.
 */
export class ReplyStream implements AsyncIterable<ReplyEvent> {
  readonly text: ReplyText;
  messageId = "";
  message: Message__Output | undefined;
  resumes = 0;
  /** Text received and then taken back by a rewind, with the code point it started at. */
  readonly replaced: { offset: number; text: string }[] = [];
  private started = false;
  private events: AsyncGenerator<ReplyEvent> | undefined;

  constructor(
    private readonly client: ChatClient,
    private readonly start:
      | { conversationId: string; content: string; requestId: string }
      | { messageId: string; offset: number; generation: number },
  ) {
    this.text = new ReplyText("offset" in start ? start.offset : 0);
    if ("messageId" in start) {
      this.messageId = start.messageId;
      this.text.generation = start.generation;
    }
  }

  /** Reads the stream to its end and returns the assistant message in its final state. */
  async result(): Promise<Message__Output> {
    for await (const _ of this) {
      // The events are kept in `text` and `message`.
    }
    if (!this.message) {
      throw new Error("the reply stream ended without its message");
    }
    return this.message;
  }

  /** One stream of events however often it is iterated: a second loop (or `result()`) continues the first. */
  [Symbol.asyncIterator](): AsyncGenerator<ReplyEvent> {
    this.events ??= this.run();
    return this.events;
  }

  private async *run(): AsyncGenerator<ReplyEvent> {
    const { attempts, initialBackoffMs, maxBackoffMs } = this.client.retry;
    for (let failures = 0; ; ) {
      try {
        // Broken before `started`, the stream has no message id yet: StreamReply again with the same request id
        // attaches to the reply the first call began (or begins it, if the first never arrived).
        const call = this.messageId
          ? this.client.openStream({
              messageId: this.messageId,
              offset: this.text.offset,
              generation: this.text.generation,
            })
          : this.client.openStream(this.start);
        // Read on past `completed` to the status that follows it: leaving early would cancel the call.
        for await (const response of call) {
          failures = 0;
          yield* this.accept(response.event);
        }
        if (this.message) {
          return;
        }
        throw new StreamBroken("the reply stream ended before the reply did");
      } catch (caught) {
        if (this.message) {
          return; // the reply is complete; what became of the call after it does not matter
        }
        const error = this.client.toChatError(caught);
        failures += 1;
        if (!this.resumable(error) || failures >= attempts) {
          throw error;
        }
        await sleep(Math.min(initialBackoffMs * 2 ** (failures - 1), maxBackoffMs));
        this.resumes += 1;
        yield { kind: "resumed", offset: this.text.offset };
      }
    }
  }

  /**
   * A read may be resumed after UNAVAILABLE (unless the model failed), or after a break a proxy reported rather
   * than the server: a reset stream (INTERNAL) or one closed without a status (UNKNOWN), with no ErrorInfo
   * (every status chat-service sends has one).
   */
  private resumable(error: unknown): boolean {
    if (error instanceof StreamBroken) {
      return true;
    }
    if (!(error instanceof ChatError)) {
      return false;
    }
    if (error.code === grpc.status.UNAVAILABLE) {
      return !MODEL_REASONS.has(error.reason);
    }
    return PROXY_BREAKS.has(error.code) && !error.reason;
  }


  private *accept(event: ReplyEvent__Output | null): Generator<ReplyEvent> {
    if (event?.started) {
      const { userMessage, assistantMessage } = event.started;
      this.messageId = assistantMessage?.messageId ?? "";
      if (!this.started && userMessage && assistantMessage) {
        this.started = true; // a resumed stream repeats the header: the caller has it already
        yield { kind: "started", userMessage, assistantMessage };
      }
    } else if (event?.delta) {
      const offset = this.text.offset;
      const text = this.text.accept(event.delta);
      if (text) {
        yield { kind: "delta", text, offset, generation: this.text.generation };
      }
    } else if (event?.rewind) {
      const { offset, generation } = event.rewind;
      const replaced = this.text.rewind(offset, generation);
      if (replaced) {
        this.replaced.push({ offset, text: replaced });
        yield { kind: "rewind", offset, generation, replaced };
      }
    } else if (event?.completed?.message) {
      this.message = event.completed.message;
      this.messageId = this.message.messageId;
      yield { kind: "completed", message: this.message };
    }
  }
}
