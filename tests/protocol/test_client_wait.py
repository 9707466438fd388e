"""How a program waits for its answers on the ring: it spins while they come
quickly, sleeps at once after waits the spin missed, and spins again once they
come quickly again."""

from ringzero import client
from ringzero.protocol import ring as rings
from ringzero.protocol import wire


def test_a_program_that_stopped_spinning_spins_again_once_an_answer_is_there_at_once(kernel):
    conn = client.connection()
    assert conn.resp_ring is not None
    conn._spin_misses = client.SPIN_MISSES_TO_STOP      # as after two slow answers: waits sleep at once
    # an answer that is in the response ring before the wait begins (put here as the kernel would;
    # the kernel's own position in the ring is stale afterwards, so the connection is not used again)
    rid = 1 << 40
    slot = client._Slot()
    conn._slots[rid] = slot
    _, kernel_resp = rings.kernel_side(memoryview(conn._region), conn.resp_ring.size)
    assert kernel_resp.put(wire.reply_head(rid, 0, 7, 0))
    conn.wait(slot)
    assert slot.done and slot.info == 7
    assert conn._spin_misses == 0                       # found before it slept: as quick as a spin's
    kernel_resp.release()
    client.disconnect()
