#!/usr/bin/env node
/**
 * chat-node: the TypeScript client from a terminal (an example of the library, and what the tests drive).
 *
 *   chat-node ask "Hello!"                  creates a conversation, streams the reply as it is written
 *   chat-node resume MESSAGE_ID --offset N  follows a reply from code point N (--generation G: of the text held)
 *
 * --json prints one JSON object a line (events, then an error if any) instead of text.
 */
import { parseArgs } from "node:util";

import { ChatClient, ChatError, type ReplyEvent, type ReplyStream } from "./index";

const USAGE = `usage: chat-node [--address HOST:PORT] [--api-key KEY] [--json] COMMAND
  ask TEXT [--conversation ID] [--system-prompt TEXT]   send TEXT, stream the reply
  resume MESSAGE_ID [--offset N] [--generation G]       follow a reply from code point N
  --attempts N   how many times a broken stream is resumed before giving up (default 8)
environment: CHAT_CLIENT_ADDRESS (default 127.0.0.1:50051), CHAT_CLIENT_API_KEY
exit status: 0 done, 1 the call failed, 2 usage`;

interface Output {
  event(event: ReplyEvent, stream: ReplyStream): void;
  error(error: unknown): void;
}

const jsonOutput: Output = {
  event(event, stream) {
    const line = (fields: object): void => void process.stdout.write(`${JSON.stringify(fields)}\n`);
    switch (event.kind) {
      case "started":
        return line({
          event: "started",
          conversationId: event.assistantMessage.conversationId,
          messageId: event.assistantMessage.messageId,
        });
      case "delta":
        return line({ event: "delta", text: event.text, offset: event.offset, generation: event.generation });
      case "resumed":
        // utf16Length: what `.length` says of the same text, the offset a client counting UTF-16 would send.
        return line({ event: "resumed", offset: event.offset, utf16Length: stream.text.text.length });
      case "rewind":
        return line({ event: "rewind", offset: event.offset, generation: event.generation, replaced: event.replaced });
      case "completed":
        return line({
          event: "completed",
          messageId: event.message.messageId,
          status: event.message.status,
          content: event.message.content,
        });
    }
  },
  error(error) {
    const fields =
      error instanceof ChatError
        ? { code: error.codeName, message: error.message, ...error.details, retryDelayMs: error.retryDelayMs }
        : { message: String(error) };
    process.stdout.write(`${JSON.stringify({ event: "error", ...fields })}\n`);
  },
};

const textOutput: Output = {
  event(event) {
    if (event.kind === "delta") {
      process.stdout.write(event.text);
    } else if (event.kind === "resumed") {
      process.stderr.write(`\n[connection lost: resuming from code point ${event.offset}]\n`);
    } else if (event.kind === "rewind") {
      // A terminal cannot take printed text back: say what is replaced, then print the continuation.
      const note = `another replica continued the reply: the text from code point ${event.offset} on is replaced`;
      process.stderr.write(`\n[${note}]\n`);
    } else if (event.kind === "completed") {
      process.stdout.write("\n");
    }
  },
  error(error) {
    if (!(error instanceof ChatError)) {
      process.stderr.write(`error: ${String(error)}\n`);
      return;
    }
    process.stderr.write(`error: ${error.codeName}: ${error.message}\n`);
    for (const violation of error.details.badRequest?.fieldViolations ?? []) {
      process.stderr.write(`  ${violation.field}: ${violation.description}\n`);
    }
    if (error.retryDelayMs !== undefined) {
      process.stderr.write(`  retry in ${(error.retryDelayMs / 1000).toFixed(1)} s\n`);
    }
  },
};

async function run(client: ChatClient, command: string, argument: string, options: Options): Promise<ReplyStream> {
  if (command === "ask") {
    const conversationId =
      options.conversation ??
      (await client.createConversation({ systemPrompt: options["system-prompt"] ?? "" })).conversationId;
    return client.streamReply(conversationId, argument);
  }
  return client.resumeReply(argument, Number(options.offset), Number(options.generation));
}

const OPTIONS = {
  address: { type: "string", default: process.env["CHAT_CLIENT_ADDRESS"] ?? "127.0.0.1:50051" },
  "api-key": { type: "string", default: process.env["CHAT_CLIENT_API_KEY"] ?? "" },
  json: { type: "boolean", default: false },
  conversation: { type: "string" },
  "system-prompt": { type: "string" },
  offset: { type: "string", default: "0" },
  generation: { type: "string", default: "0" },
  attempts: { type: "string", default: "8" },
  help: { type: "boolean", short: "h", default: false },
} as const;

type Options = ReturnType<typeof parseArgs<{ options: typeof OPTIONS }>>["values"];

async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args, options: OPTIONS, allowPositionals: true });
  } catch (error) {
    process.stderr.write(`${String(error)}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, argument] = positionals;
  const known = command === "ask" || command === "resume";
  const numbers = [values.offset, values.generation, values.attempts].every((value) => /^\d+$/.test(value));
  if (values.help || !known || argument === undefined || !numbers || Number(values.attempts) < 1) {
    process.stderr.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  const output = values.json ? jsonOutput : textOutput;
  const client = new ChatClient(values.address, {
    apiKey: values["api-key"],
    retry: { attempts: Number(values.attempts), initialBackoffMs: 50, maxBackoffMs: 2_000 },
  });
  try {
    const stream = await run(client, command, argument, values);
    for await (const event of stream) {
      output.event(event, stream);
    }
    return 0;
  } catch (error) {
    output.error(error);
    return 1;
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then(
  (status) => {
    process.exitCode = status;
  },
  (error: unknown) => {
    process.stderr.write(`${String(error)}\n`);
    process.exitCode = 1;
  },
);
