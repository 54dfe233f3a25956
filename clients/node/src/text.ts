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

/**
 * The text of one reply as its deltas arrive, possibly over several streams: after a break, ResumeReply from
 * `offset` (a code-point count) replays nothing twice and skips nothing.
 */
export class ReplyText {
  private readonly parts: string[] = [];

  /** `offset`: the code point the text starts at (0, or where a ResumeReply began). */
  constructor(private position = 0) {}

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
  accept(delta: { text: string; offset: number }): string {
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
    return fresh;
  }
}
