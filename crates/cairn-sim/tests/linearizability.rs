//! The WGL checker against stateright's linearizability tester on small random register histories, and
//! on larger histories that are linearizable by construction. Randomized: the seed is printed and
//! `CAIRN_SEED=<n>` replays it.

use cairn_sim::linearizability::{Operation, Register, RegisterInput, RegisterOutput, Verdict, check};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// The same register as a stateright sequential spec.
#[derive(Clone, Debug, Default, Hash, PartialEq)]
struct CasRegister(Option<u64>);

impl SequentialSpec for CasRegister {
    type Op = RegisterInput;
    type Ret = RegisterOutput;

    fn invoke(&mut self, op: &RegisterInput) -> RegisterOutput {
        match *op {
            RegisterInput::Read => RegisterOutput::Read(self.0),
            RegisterInput::Write(v) => {
                self.0 = Some(v);
                RegisterOutput::Done
            }
            RegisterInput::Delete => {
                self.0 = None;
                RegisterOutput::Done
            }
            RegisterInput::Cas { expect, new } => {
                let applied = self.0 == expect;
                if applied {
                    self.0 = Some(new);
                }
                RegisterOutput::Cas(applied)
            }
        }
    }
}

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    let seed = std::env::var("CAIRN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("seed {seed} (replay with CAIRN_SEED={seed})");
    seed | 1
}

/// One event of a generated history, in time order (the index is the time).
enum Event {
    Call(usize),
    Return(usize),
}

/// A history of `ops` operations by `clients` clients on one register where every operation takes effect
/// at one instant between its call and its return (so the history is linearizable), then, with
/// probability `corrupt_percent`, one known output replaced by a wrong one. Operations still open at the
/// end have no response.
fn generate(
    rng: &mut Rng,
    clients: usize,
    ops: usize,
    corrupt_percent: u64,
) -> (Vec<Operation<RegisterInput, RegisterOutput>>, Vec<Event>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Client {
        Idle,
        Called(usize),
        Applied(usize),
        // Its last response never came: it issues nothing more.
        Lost,
    }
    let mut history: Vec<Operation<RegisterInput, RegisterOutput>> = Vec::new();
    let mut events = Vec::new();
    let mut state = vec![Client::Idle; clients];
    let mut register = CasRegister(None);
    let mut next_value = 1;
    let mut time = 0u64;
    loop {
        let busy = state.iter().any(|c| matches!(c, Client::Called(_) | Client::Applied(_)));
        let can_call = history.len() < ops && state.contains(&Client::Idle);
        if !busy && !can_call {
            break;
        }
        time += 1;
        let c = rng.below(clients as u64) as usize;
        match state[c] {
            Client::Idle if history.len() < ops => {
                let input = match rng.below(4) {
                    0 => RegisterInput::Read,
                    1 => {
                        next_value += 1;
                        RegisterInput::Write(next_value)
                    }
                    2 if rng.below(4) == 0 => RegisterInput::Delete,
                    _ => {
                        next_value += 1;
                        let expect = match rng.below(3) {
                            0 => None,
                            _ => Some(rng.below(next_value + 1)),
                        };
                        RegisterInput::Cas { expect, new: next_value }
                    }
                };
                history.push(Operation { client: c as u64, call: time, ret: None, input, output: None });
                events.push(Event::Call(history.len() - 1));
                state[c] = Client::Called(history.len() - 1);
            }
            Client::Called(i) => {
                // The instant it takes effect.
                history[i].output = Some(register.invoke(&history[i].input));
                state[c] = Client::Applied(i);
            }
            Client::Applied(i) if rng.below(12) == 0 => {
                // The response is lost: the client never learns the outcome.
                history[i].output = None;
                state[c] = Client::Lost;
            }
            Client::Applied(i) => {
                history[i].ret = Some(time);
                events.push(Event::Return(i));
                state[c] = Client::Idle;
            }
            Client::Idle | Client::Lost => {}
        }
    }
    if rng.below(100) < corrupt_percent {
        let known: Vec<usize> = (0..history.len()).filter(|&i| history[i].output.is_some()).collect();
        if !known.is_empty() {
            let i = known[rng.below(known.len() as u64) as usize];
            history[i].output = Some(match history[i].output {
                Some(RegisterOutput::Read(v)) => RegisterOutput::Read(if v.is_some() && rng.below(2) == 0 {
                    None
                } else {
                    Some(rng.below(next_value + 2))
                }),
                Some(RegisterOutput::Cas(applied)) => RegisterOutput::Cas(!applied),
                _ => RegisterOutput::Read(None),
            });
        }
    }
    (history, events)
}

/// Stateright's verdict on the same history (events fed in time order; unanswered operations stay in flight).
fn stateright_verdict(history: &[Operation<RegisterInput, RegisterOutput>], events: &[Event]) -> bool {
    let mut tester = LinearizabilityTester::new(CasRegister(None));
    for e in events {
        let fed = match *e {
            Event::Call(i) => tester.on_invoke(history[i].client, history[i].input).map(|_| ()),
            Event::Return(i) => match history[i].output {
                Some(out) if history[i].ret.is_some() => tester.on_return(history[i].client, out).map(|_| ()),
                _ => Ok(()),
            },
        };
        assert!(fed.is_ok(), "stateright rejected the history shape: {fed:?}");
    }
    tester.is_consistent()
}

#[test]
fn agrees_with_stateright_on_small_histories() {
    let seed = seed();
    let mut rng = Rng(seed);
    let (mut linearizable, mut not) = (0, 0);
    for round in 0..3000 {
        let clients = 1 + rng.below(4) as usize;
        let ops = 1 + rng.below(8) as usize;
        let (history, events) = generate(&mut rng, clients, ops, 50);
        let ours = check(&Register, &history, 1_000_000);
        let theirs = stateright_verdict(&history, &events);
        assert_ne!(ours, Verdict::Unknown, "seed {seed} round {round}");
        assert_eq!(
            ours == Verdict::Linearizable,
            theirs,
            "seed {seed} round {round}: WGL says {ours:?}, stateright says {theirs}; history {history:#?}"
        );
        if theirs { linearizable += 1 } else { not += 1 }
    }
    // Both kinds were exercised.
    assert!(linearizable > 300 && not > 300, "seed {seed}: {linearizable} linearizable, {not} not");
}

#[test]
fn accepts_large_linearizable_histories_and_rejects_their_corruptions() {
    let seed = seed();
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    for round in 0..40 {
        let (history, _) = generate(&mut rng, 10, 300, 0);
        assert_eq!(check(&Register, &history, 5_000_000), Verdict::Linearizable, "seed {seed} round {round}");
    }
    // A read that saw a value nobody ever wrote cannot be explained.
    let (mut history, _) = generate(&mut rng, 10, 300, 0);
    let read = history.iter().position(|o| o.input == RegisterInput::Read && o.output.is_some());
    if let Some(i) = read {
        history[i].output = Some(RegisterOutput::Read(Some(u64::MAX)));
        assert_eq!(check(&Register, &history, 5_000_000), Verdict::NotLinearizable, "seed {seed}");
    }
}
