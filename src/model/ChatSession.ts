/**
 * A conversation with a model: the chat template renders the whole conversation each turn, and
 * the KV cache keeps what earlier turns computed, so a turn computes only the new user message
 * and the template's text around it. When the conversation would not leave room for the reply in
 * the context, its oldest turns are dropped (the system prompt is kept) and onTrim says so.
 */
import { InvalidOptionError, MoeRunError } from "../errors.js";
import type { ChatMessage, TextTokenizer } from "../tokenizer/TextTokenizer.js";
import type { SequenceGenerateOptions, SequenceStats, TokenSequence } from "./KvSequence.js";
import { PromptContinuation } from "./PromptContinuation.js";

export interface ChatSessionOptions {
  /** The system message the conversation starts with; kept when old turns are dropped. */
  systemPrompt?: string;
  /** Called when the oldest turns are dropped so that the conversation and its reply fit the context. */
  onTrim?: (event: ChatTrimEvent) => void;
}

export interface ChatTrimEvent {
  /** Turns (a user message and its reply) dropped, oldest first. */
  droppedTurns: number;
  /** Earlier turns still in the conversation. */
  keptTurns: number;
  /** Tokens of the prompt after dropping. */
  promptTokens: number;
  contextSize: number;
}

/** A turn's options: those of generate() but `chat` (always on); onStats gets ChatTurnStats. */
export type ChatTurnOptions = Omit<SequenceGenerateOptions, "onStats"> & { onStats?: (stats: ChatTurnStats) => void };

export interface ChatTurnStats extends SequenceStats {
  /** Turns dropped before this one to fit the context. */
  droppedTurns: number;
  /** Tokens of the conversation after this turn (prompt and reply). */
  conversationTokens: number;
}

export class ChatSession {
  readonly systemPrompt: string | undefined;
  /** The statistics of the last turn (also of one stopped early). */
  lastStats: ChatTurnStats | undefined;
  /** User and assistant messages, alternating, oldest first. */
  private turns: ChatMessage[] = [];
  /** The conversation as the template rendered it up to the end of the last reply, and its ids. */
  private readonly conversation: PromptContinuation;
  private busy = false;
  private disposed = false;

  constructor(
    private readonly tokenizer: TextTokenizer,
    readonly contextSize: number,
    private readonly sequence: TokenSequence,
    private readonly options: ChatSessionOptions = {}
  ) {
    if (!tokenizer.hasChatTemplate) {
      throw new InvalidOptionError("this model's tokenizer_config.json has no chat_template, which a chat needs; use plain generation (`moe-run run`) instead");
    }
    this.systemPrompt = options.systemPrompt;
    this.conversation = new PromptContinuation((text) => tokenizer.encode(text, { addSpecialTokens: false }));
  }

  /** The conversation: the system prompt (if any), then user and assistant messages. */
  get history(): ChatMessage[] {
    return [...this.system(), ...this.turns.map((m) => ({ ...m }))];
  }

  /** Tokens of the conversation so far. */
  get conversationTokens(): number {
    return this.conversation.length;
  }

  /**
   * Sends a user message and streams the reply; the return value is the turn's statistics. A
   * reply stopped early (abort, or the consumer leaving the loop) stays in the conversation as far
   * as it got; after an error the conversation is as it was before the turn.
   */
  async *prompt(userText: string, options: ChatTurnOptions = {}): AsyncGenerator<string, ChatTurnStats> {
    if (this.disposed) throw new MoeRunError("DISPOSED", "this chat session has been disposed");
    if (this.busy) throw new InvalidOptionError("a reply is being generated: one turn at a time");
    this.busy = true;
    try {
      yield* this.turn(userText, options);
      return this.lastStats!;
    } finally {
      this.busy = false;
    }
  }

  private async *turn(userText: string, options: ChatTurnOptions): AsyncGenerator<string, void> {
    // Room for the reply: its max tokens, but never over half the context (so that a long
    // max-tokens does not leave room for no history at all).
    const reserve = Math.min(options.maxTokens ?? 128, Math.floor(this.contextSize / 2));
    let turns = [...this.turns, { role: "user", content: userText }];
    let prompt = this.render(turns);
    let dropped = 0;
    while (prompt.ids.length + reserve > this.contextSize && turns.length > 1) {
      turns = turns.slice(2);
      dropped++;
      prompt = this.render(turns);
    }
    if (dropped > 0) this.options.onTrim?.({ droppedTurns: dropped, keptTurns: (turns.length - 1) / 2, promptTokens: prompt.ids.length, contextSize: this.contextSize });
    const generated: number[] = [];
    let reply = "";
    let stats: SequenceStats | undefined;
    let failed = false;
    const gen = this.sequence.generate(prompt.ids, {
      ...options,
      onToken: (id) => {
        generated.push(id);
        options.onToken?.(id);
      },
      onStats: (s) => void (stats = s),
    });
    let done = false;
    try {
      for (;;) {
        const r = await gen.next();
        if (r.done) {
          done = true;
          break;
        }
        reply += r.value;
        yield r.value;
      }
    } catch (err) {
      done = true;
      failed = !options.signal?.aborted;
      throw err;
    } finally {
      // The consumer left the loop: end the generation (its finally records the cache).
      if (!done) await gen.return(undefined as never);
      if (!failed && stats) {
        this.turns = [...turns, { role: "assistant", content: reply }];
        this.conversation.remember(prompt.text + reply, [...prompt.ids, ...generated]);
        this.lastStats = { ...stats, droppedTurns: dropped, conversationTokens: this.conversation.length };
        options.onStats?.(this.lastStats);
      }
    }
  }

  /** Starts the conversation again (the system prompt stays) with an empty KV cache. */
  async reset(): Promise<void> {
    if (this.busy) throw new InvalidOptionError("cannot reset the chat while a reply is being generated; abort it first");
    this.turns = [];
    this.conversation.clear();
    this.lastStats = undefined;
    await this.sequence.reset();
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    await this.sequence.dispose();
  }

  private system(): ChatMessage[] {
    return this.systemPrompt === undefined ? [] : [{ role: "system", content: this.systemPrompt }];
  }

  /** The prompt for `turns`: its text and ids (see PromptContinuation). */
  private render(turns: readonly ChatMessage[]): { text: string; ids: number[] } {
    const text = this.tokenizer.applyChatTemplate([...this.system(), ...turns], { addGenerationPrompt: true });
    return { text, ids: this.conversation.encodeText(text) };
  }
}
