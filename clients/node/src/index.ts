export { ChatClient, DEFAULT_PROTOS_DIR, ReplyStream } from "./client";
export type { ChatClientOptions, ReplyEvent, RetryPolicy } from "./client";
export { ChatError, STATUS_DETAILS_KEY, StatusDecoder } from "./errors";
export type { ErrorDetails } from "./errors";
export { ReplyText, codePointLength, sliceCodePoints } from "./text";
