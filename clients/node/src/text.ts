/**
 * Reply offsets are Unicode code points (SPEC: `delta.offset` is where `text` starts in code points), while a
 * JavaScript string is UTF-16: `text.length` counts code units, and a character outside the Basic
 * Multilingual Plane (most emoji: "🙂".length === 2) is two of them. Everything that meets an offset counts
 * with these functions, never with `.length` or `.slice()`.
 */

/** The number of code points in `text`: the offset just past it. `[...text].length`, without the array. */
export function codePointLength(text: string): number {
  let count = 0;
  for (const _ of text) {
    count += 1;
  }
  return count;
}

/** `text` from its code point `start` on (`[...text].slice(start).join("")`, without the array). */
export function sliceCodePoints(text: string, start: number): string {
  let index = 0;
  for (let skipped = 0; skipped < start && index < text.length; skipped += 1) {
    const point = text.codePointAt(index) ?? 0;
    index += point > 0xffff ? 2 : 1;
  }
  return text.slice(index);
}

/** `text` up to its code point `end` (`[...text].slice(0, end).join("")`, without the array). */
export function headCodePoints(text: string, end: number): string {
  return text.slice(0, text.length - sliceCodePoints(text, end).length);
}

/**
 * The text of one reply as its deltas arrive, possibly over several streams: after a break, ResumeReply from
 * `offset` (a code-point count) and the `generation` of the text received replays nothing twice and skips
 * nothing. When the replica writing the reply stopped before storing what it had sent, another continues the
 * reply from the stored text and the server sends a rewind: `rewind()` takes the text back to its offset.
 */
export class ReplyText {
  private parts: string[] = [];
  /** Which generation of the reply wrote the last text received (0: none yet). */
  generation = 0;

  /** `offset`: the code point the text starts at (0, or where a ResumeReply began). */
  constructor(
    private position = 0,
    private readonly start = position,
  ) {}

  /** Where the next delta must start, in code points: the offset to resume from. */
  get offset(): number {
    return this.position;
  }

  /** The text received so far (from the starting offset). */
  get text(): string {
    return this.parts.join("");
  }

  /**
   * Takes a delta and returns the text it adds: "" when it was all received before (a resumed stream
   * repeats from the offset asked, which may be earlier than ours), only its unseen tail when it overlaps.
   * A delta that starts past our offset would lose text, so it is an error.
   */
  accept(delta: { text: string; offset: number; generation?: number }): string {
    const end = delta.offset + codePointLength(delta.text);
    if (end <= this.position) {
      return "";
    }
    if (delta.offset > this.position) {
      throw new RangeError(`the reply skipped from code point ${this.position} to ${delta.offset}`);
    }
    const fresh = sliceCodePoints(delta.text, this.position - delta.offset);
    this.parts.push(fresh);
    this.position = end;
    this.generation = delta.generation || this.generation;
    return fresh;
  }

  /**
   * Takes back the text from code point `offset` on (the deltas that follow replace it) and returns it: ""
   * when nothing past `offset` was received.
   */
  rewind(offset: number, generation: number): string {
    if (offset >= this.position) {
      return "";
    }
    const text = this.text;
    const keep = Math.max(offset - this.start, 0);
    const replaced = sliceCodePoints(text, keep);
    this.parts = [headCodePoints(text, keep)];
    this.position = Math.max(offset, this.start);
    this.generation = generation;
    return replaced;
  }
}
