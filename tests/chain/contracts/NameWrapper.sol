// SPDX-License-Identifier: MIT
// A stand-in for ENS's NameWrapper: wraps a .eth second-level name (the registrar token moves
// to the wrapper, the wrapper becomes the registry owner) and keeps its owner as an ERC-1155
// token id = uint256(namehash). ownerOf returns the zero address once the name has expired.
// Test chain only.
pragma solidity ^0.8.20;

interface IRegistrar {
    function transferFrom(address from, address to, uint256 id) external;
    function reclaim(uint256 id, address owner) external;
    function nameExpires(uint256 id) external view returns (uint256);
    function baseNode() external view returns (bytes32);
}

contract NameWrapper {
    IRegistrar public immutable registrar;

    struct Token {
        address owner;
        uint64 expiry;
    }

    mapping(uint256 => Token) private tokens;

    event NameWrapped(bytes32 indexed node, bytes name, address owner, uint32 fuses, uint64 expiry);
    event TransferSingle(address indexed operator, address indexed from, address indexed to,
                         uint256 id, uint256 value);

    constructor(IRegistrar registrar_) {
        registrar = registrar_;
    }

    // The caller must own the registrar token and have approved this contract for it.
    function wrapETH2LD(string calldata label, address wrappedOwner, uint16, address)
        external returns (uint64 expiry)
    {
        bytes32 labelhash = keccak256(bytes(label));
        uint256 id = uint256(labelhash);
        registrar.transferFrom(msg.sender, address(this), id);
        registrar.reclaim(id, address(this));
        bytes32 node = keccak256(abi.encodePacked(registrar.baseNode(), labelhash));
        expiry = uint64(registrar.nameExpires(id));
        tokens[uint256(node)] = Token(wrappedOwner, expiry);
        emit NameWrapped(node, bytes(label), wrappedOwner, 0, expiry);
        emit TransferSingle(msg.sender, address(0), wrappedOwner, uint256(node), 1);
    }

    function ownerOf(uint256 id) external view returns (address) {
        Token memory token = tokens[id];
        if (token.expiry <= block.timestamp) {
            return address(0);
        }
        return token.owner;
    }

    function safeTransferFrom(address from, address to, uint256 id, uint256 amount, bytes calldata)
        external
    {
        Token storage token = tokens[id];
        require(token.expiry > block.timestamp, "NameWrapper: name expired");
        require(token.owner == from && msg.sender == from, "NameWrapper: not authorised");
        require(amount == 1, "NameWrapper: amount must be 1");
        token.owner = to;
        emit TransferSingle(msg.sender, from, to, id, 1);
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7 || interfaceId == 0xd9b67a26;
    }
}
